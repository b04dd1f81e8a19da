"""Conversation templates: how LLaVA conversations become token ids and labels.

A template renders a conversation as an ordered list of text segments, each either prompt (masked
with -100) or target (an assistant reply with its end-of-turn token). Token ids are built piece by
piece: piece k is the tokenization of the text up to segment k minus the tokenization of the text up to
segment k-1. When a boundary between segments is not a token boundary of the full string (the tokens
of a prefix are not a prefix of the tokens of the longer text), the masking would not line up with
the ids the model sees at inference: that sample is a *tokenization mismatch*. LLaVA silently drops
such samples; here every one is counted and the caller decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from datasets_spec.errors import UserError
from datasets_spec.schema import IMAGE_TOKEN

IGNORE_INDEX = -100
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    mismatch: bool
    """A segment boundary is not a token boundary of the full text, or there is nothing to learn."""
    overlong: bool
    """Longer than max_length; never truncated (that could cut image tokens or the answer)."""

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _turns(conversations: Sequence[Mapping[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system text, [(user, assistant), ...]) from LLaVA `from`/`value` turns."""
    system = None
    turns = list(conversations)
    if turns and turns[0]["from"] == "system":
        system = turns[0]["value"]
        turns = turns[1:]
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(turns), 2):
        user, reply = turns[i], turns[i + 1] if i + 1 < len(turns) else None
        if user["from"] not in USER_ROLES or reply is None or reply["from"] not in ASSISTANT_ROLES:
            raise ValueError("conversation turns must alternate human/gpt, starting with human")
        pairs.append((user["value"], reply["value"]))
    return system, pairs


class Template:
    """Base class: subclasses render segments and the generation prompt."""

    name: str = ""
    add_bos: bool = True
    """Prepend the tokenizer's BOS token id (chat templates write their own)."""

    def segments(self, conversations: Sequence[Mapping[str, str]], tokenizer) -> list[Segment]:
        raise NotImplementedError

    def prompt(self, human_text: str, tokenizer, *, system: str | None = None) -> str:
        raise NotImplementedError

    def end_of_turn(self, tokenizer) -> str:
        """The text that closes an assistant reply (a stop string for generation)."""
        return tokenizer.eos_token


class VicunaV1(Template):
    """LLaVA-1.5's `vicuna_v1`: `SYS USER: q ASSISTANT: a</s>USER: ...`."""

    name = "vicuna_v1"

    def segments(self, conversations, tokenizer):
        system, pairs = _turns(conversations)
        # The space after the system text starts the first "USER" segment: SentencePiece merges it into
        # `▁US`, so a system segment ending in " " would tokenize alone to a lone `▁` that the full text
        # does not have (every sample a mismatch).
        out = [Segment(system or VICUNA_SYSTEM, False)]
        for i, (user, reply) in enumerate(pairs):
            out.append(Segment(f"{' ' if i == 0 else ''}USER: {user} ASSISTANT:", False))
            # The separating space belongs to the reply: SentencePiece writes it as the reply's first piece.
            out.append(Segment(f" {reply}{tokenizer.eos_token}", True))
        return out

    def prompt(self, human_text, tokenizer, *, system=None):
        return f"{system or VICUNA_SYSTEM} USER: {human_text} ASSISTANT:"


class MistralInstruct(Template):
    """Mistral-Instruct: `[INST] q [/INST] a</s>[INST] ...` (BOS once at the start).

    LLaVA's `conv_mistral_instruct` writes `[/INST] a </s>`: that extra space is an extra `▁` label token
    before `</s>` that Mistral's own chat template never produces, so a model trained on it would emit
    the stray `▁` at inference; the reply here ends the way Mistral-Instruct was trained to end it.
    """

    name = "mistral_instruct"

    def segments(self, conversations, tokenizer):
        system, pairs = _turns(conversations)
        out = []
        for i, (user, reply) in enumerate(pairs):
            text = f"{system}\n\n{user}" if system and i == 0 else user
            out.append(Segment(f"[INST] {text} [/INST]", False))
            out.append(Segment(f" {reply}{tokenizer.eos_token}", True))
        return out

    def prompt(self, human_text, tokenizer, *, system=None):
        text = f"{system}\n\n{human_text}" if system else human_text
        return f"[INST] {text} [/INST]"


class Llama2(Template):
    """LLaMA-2 chat: `[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] ...`."""

    name = "llama_2"

    def segments(self, conversations, tokenizer):
        system, pairs = _turns(conversations)
        out = []
        for i, (user, reply) in enumerate(pairs):
            lead = "" if i == 0 else tokenizer.bos_token
            text = self._with_system(user, system) if i == 0 else user
            out.append(Segment(f"{lead}[INST] {text} [/INST]", False))
            out.append(Segment(f" {reply} {tokenizer.eos_token}", True))
        return out

    @staticmethod
    def _with_system(text: str, system: str | None) -> str:
        return f"<<SYS>>\n{system or LLAMA_2_SYSTEM}\n<</SYS>>\n\n{text}"

    def prompt(self, human_text, tokenizer, *, system=None):
        return f"[INST] {self._with_system(human_text, system)} [/INST]"


class Plain(Template):
    """LLaVA's stage-1 `plain`: the image tokens, then the first reply and a newline; no instruction."""

    name = "plain"

    def segments(self, conversations, tokenizer):
        _, pairs = _turns(conversations)
        user, reply = pairs[0]
        image = IMAGE_TOKEN if IMAGE_TOKEN in user else ""
        return [Segment(image, False), Segment(reply + "\n", True)]

    def prompt(self, human_text, tokenizer, *, system=None):
        return IMAGE_TOKEN if IMAGE_TOKEN in human_text else ""

    def end_of_turn(self, tokenizer):
        return "\n"


class ChatTemplate(Template):
    """The tokenizer's own jinja chat template (e.g. SmolLM2's ChatML).

    Each reply's segment is what rendering the conversation through that reply adds to rendering it up
    to the generation prompt; its trailing whitespace after the end-of-turn token stays prompt.
    """

    name = "chat_template"
    add_bos = False

    @staticmethod
    def _messages(conversations) -> list[dict[str, str]]:
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                 "system": "system"}
        return [{"role": roles[t["from"]], "content": t["value"]} for t in conversations]

    @staticmethod
    def _render(tokenizer, messages, *, generation: bool) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("template 'chat_template': this tokenizer has no chat template; "
                            f"choose one of {', '.join(n for n in TEMPLATES if n != 'chat_template')}")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def segments(self, conversations, tokenizer):
        _turns(conversations)  # validates alternation
        messages = self._messages(conversations)
        out: list[Segment] = []
        done = ""
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self._render(tokenizer, messages[:i], generation=True)
            through = self._render(tokenizer, messages[: i + 1], generation=False)
            if not before.startswith(done) or not through.startswith(before):
                return [Segment(self._render(tokenizer, messages, generation=False), False)]
            reply = through[len(before):]
            kept = reply.rstrip()
            out += [Segment(before[len(done):], False), Segment(kept, True)]
            done = before + kept
        full = self._render(tokenizer, messages, generation=False)
        if not full.startswith(done):
            return [Segment(full, False)]
        if full[len(done):]:
            out.append(Segment(full[len(done):], False))
        return out

    def prompt(self, human_text, tokenizer, *, system=None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": human_text}
        ]
        return self._render(tokenizer, messages, generation=True)

    def end_of_turn(self, tokenizer):
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        before = self._render(tokenizer, probe[:1], generation=True)
        through = self._render(tokenizer, probe, generation=False)
        tail = through[len(before):].rstrip()
        return tail[1:] if tail.startswith("a") and len(tail) > 1 else tokenizer.eos_token


TEMPLATES: dict[str, Template] = {t.name: t for t in [MistralInstruct(), Llama2(), VicunaV1(), Plain(),
                                                      ChatTemplate()]}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UserError(f"unknown template {name!r} (templates: {', '.join(TEMPLATES)})")
    return TEMPLATES[name]


IMAGE_PLACEMENTS = ("front", "keep")
"""`front`: LLaVA's layout, `<image>\n` + the turn's text (its preprocess_multimodal, used for training
and ScienceQA evaluation alike, so checkpoints and projectors trained with LLaVA see the same prompt);
`keep`: `<image>` where the data put it (ScienceQA's conversion writes it at the end)."""


def place_image(text: str, placement: str = "front") -> str:
    """``text`` with its `<image>` moved to the front as LLaVA does, or unchanged for `keep`."""
    if placement not in IMAGE_PLACEMENTS:
        raise UserError(f"unknown image placement {placement!r} "
                        f"(choose one of: {', '.join(IMAGE_PLACEMENTS)})")
    if placement == "keep" or IMAGE_TOKEN not in text:
        return text
    return f"{IMAGE_TOKEN}\n{text.replace(IMAGE_TOKEN, '').strip()}".strip()


def check_tokenizer(tokenizer, template: str | Template) -> None:
    """Refuse a tokenizer that ``template`` cannot train with: no EOS, an EOS that is the sequence-start
    token, or an end-of-turn text that is not one token of the vocabulary (labels would end in pieces).

    EOS equal to BOS is refused when the tokenizer prepends that BOS to every text itself (SentencePiece
    vocabularies: `<s>`), which is what a swapped GGUF tokenizer looks like; GPT-style vocabularies whose
    one `<|endoftext|>` is BOS, EOS and unk at once by design (Phi-2) and add no BOS pass.
    """
    tmpl = get_template(template) if isinstance(template, str) else template
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    here = f"template {tmpl.name!r}"
    if eos is None:
        raise UserError(f"{here}: the tokenizer has no EOS token, so no reply could end")
    if bos is not None and eos == bos and tokenizer("a")["input_ids"][:1] == [bos]:
        raise UserError(f"{here}: the tokenizer's EOS {tokenizer.eos_token!r} is also its BOS (id {eos}), so "
                        "every reply would end in BOS (transformers' GGUF loader swaps them; "
                        "train.vocabs.repair_gguf_special_tokens fixes it from the file's metadata)")
    if tmpl.name == "llama_2" and bos is None:
        raise UserError(f"{here}: the tokenizer has no BOS token, which starts every [INST] round")
    if tmpl.name == "plain":
        return  # ends each caption with a newline, which every vocabulary can spell
    end = tmpl.end_of_turn(tokenizer)
    ids = _encode(tokenizer, [end])[0]
    # A chat template's end-of-turn text may be spelled in pieces (ChatML on a character vocabulary);
    # the EOS token the other templates end with must be the one EOS id.
    wanted = ids == [eos] if end == tokenizer.eos_token else bool(ids)
    unk = tokenizer.unk_token_id
    if not wanted or (unk is not None and unk != eos and unk in ids):
        raise UserError(f"{here}: the end-of-turn token {end!r} is not in this tokenizer's vocabulary "
                        f"(it encodes to {ids[:8]}); choose another --template")


def _encode(tokenizer, texts: list[str], image: int | None = None) -> list[list[int]]:
    """Token ids of each text, the pieces between `<image>` placeholders tokenized one by one.

    That is LLaVA's `tokenizer_image_token`: with a non-legacy SentencePiece conversion the text after
    `<image>` then starts with `▁` as it does in LLaVA (tokenized in one call it would not); with legacy
    conversions and byte-level BPEs both ways give the same ids.
    """
    if not any(IMAGE_TOKEN in t for t in texts):
        return _encode_batch(tokenizer, texts)
    pieces = [t.split(IMAGE_TOKEN) for t in texts]
    encoded = iter(_encode_batch(tokenizer, [p for ps in pieces for p in ps]))
    image = image_token_id(tokenizer) if image is None else image
    out = []
    for ps in pieces:
        ids = list(next(encoded))
        for _ in ps[1:]:
            ids += [image, *next(encoded)]
        out.append(ids)
    return out


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    # A fast tokenizer's __call__ is exactly its Rust backend's encode_batch plus a third of a millisecond
    # of Python bookkeeping per call, a third of the whole per-sample budget: call the backend directly.
    backend = getattr(tokenizer, "_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _bos(tokenizer, template: Template) -> list[int]:
    return [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []


def image_token_id(tokenizer) -> int:
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token (train.model.build_llava adds it)")
    return tid


def expand_image_tokens(ids: list[int], labels: list[int] | None, image_id: int, n: int):
    """Replace every image token id by ``n`` copies (labels -100 there)."""
    where = [k for k, tid in enumerate(ids) if tid == image_id]
    out_ids: list[int] = []
    out_labels: list[int] = []
    start = 0
    for k in [*where, len(ids)]:  # copy the runs between placeholders as slices (a hot loop)
        out_ids += ids[start:k]
        out_labels += labels[start:k] if labels is not None else []
        if k < len(ids):
            out_ids += [image_id] * n
            out_labels += [IGNORE_INDEX] * n
        start = k + 1
    return out_ids, (out_labels if labels is not None else None)


def tokenize_conversation(
    conversations: Sequence[Mapping[str, str]],
    tokenizer,
    template: str | Template,
    *,
    num_image_tokens: int,
    max_length: int,
    system: str | None = None,
    image_placement: str = "front",
) -> TokenizedSample:
    """Token ids and labels (-100 except assistant replies and their end-of-turn token) for one sample.

    ``system`` is the system message for a conversation that has none (None = the template's default);
    ``image_placement`` is where `<image>` goes (:data:`IMAGE_PLACEMENTS`).
    """
    tmpl = get_template(template) if isinstance(template, str) else template
    conversations = [{**t, "value": place_image(t["value"], image_placement)}
                     for t in with_system(conversations, system)]
    segments = [s for s in tmpl.segments(conversations, tokenizer) if s.text]
    prefixes, text = [], ""
    for seg in segments:
        text += seg.text
        prefixes.append(text)
    img = image_token_id(tokenizer)
    encoded = _encode(tokenizer, prefixes, img)
    ids = _bos(tokenizer, tmpl)
    labels = [IGNORE_INDEX] * len(ids)
    mismatch, prev = False, []
    for seg, cur in zip(segments, encoded, strict=True):
        if cur[: len(prev)] != prev:
            mismatch = True
        piece = cur[len(prev):] if len(cur) >= len(prev) else []
        ids += piece
        labels += piece if seg.target else [IGNORE_INDEX] * len(piece)
        prev = cur
    if encoded and ids[len(ids) - len(encoded[-1]):] != encoded[-1]:
        mismatch = True
    if img in labels:
        mismatch = True  # an image placeholder inside an answer cannot be learned
    if labels.count(IGNORE_INDEX) == len(labels):
        mismatch = True  # nothing to learn
    ids, labels = expand_image_tokens(ids, labels, img, num_image_tokens)
    return TokenizedSample(ids, labels, mismatch, len(ids) > max_length)


def with_system(conversations: Sequence[Mapping[str, str]], system: str | None) -> list[Mapping[str, str]]:
    """The conversation with ``system`` as its first turn, unless it has a system turn already."""
    turns = list(conversations)
    if system is None or (turns and turns[0]["from"] == "system"):
        return turns
    return [{"from": "system", "value": system}, *turns]


def generation_prompt(
    human_text: str,
    tokenizer,
    template: str | Template,
    *,
    num_image_tokens: int,
    system: str | None = None,
    image_placement: str = "front",
) -> list[int]:
    """Token ids of the prompt up to where the assistant's reply starts (image tokens expanded)."""
    text = generation_prompt_text(human_text, tokenizer, template, system=system,
                                  image_placement=image_placement)
    tmpl = get_template(template) if isinstance(template, str) else template
    ids = _bos(tokenizer, tmpl) + _encode(tokenizer, [text])[0]
    return expand_image_tokens(ids, None, image_token_id(tokenizer), num_image_tokens)[0]


def generation_prompt_text(human_text: str, tokenizer, template: str | Template, *,
                           system: str | None = None, image_placement: str = "front") -> str:
    """The prompt as text (one `<image>` placeholder, not expanded; no BOS)."""
    tmpl = get_template(template) if isinstance(template, str) else template
    return tmpl.prompt(place_image(human_text, image_placement), tokenizer, system=system)


def stop_token_ids(tokenizer, template: str | Template) -> list[int]:
    """Token ids that end an assistant reply (for generation's eos_token_id)."""
    tmpl = get_template(template) if isinstance(template, str) else template
    ids = _encode(tokenizer, [tmpl.end_of_turn(tokenizer)])[0]
    out = [ids[-1]] if ids else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in out:
        out.append(tokenizer.eos_token_id)
    return out
