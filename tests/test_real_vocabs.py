"""Every template with the real LLaMA-2, Mistral and SmolLM2 vocabularies, checked against LLaVA's own
preprocessing (`preprocess_v1`, `preprocess_llama_2`, `preprocess_plain` of haotian-liu/LLaVA) and against
llama.cpp's reference tokenizations."""

from __future__ import annotations

import pytest
from vocab_helpers import REAL_VOCABS, real_tokenizer

from datasets_spec.errors import UserError
from datasets_spec.scienceqa import build_conversations
from train.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    check_tokenizer,
    generation_prompt,
    tokenize_conversation,
)
from train.vocabs import llama_gguf_file, llama_reference_cases, repair_gguf_special_tokens

N_IMG = 576  # CLIP ViT-L/14 at 336 px: LLaVA-1.5's image tokens

PROBLEMS = [
    dict(question="Which animal's feet are also adapted for grabbing prey?", hint="Bald eagles eat fish.",
         choices=["bald eagle", "red-necked phalarope"], answer=0, image=True),
    dict(question="Which word would you find on a dictionary page between the guide words cow - cry?",
         hint="", choices=["cradle", "cub"], answer=0, image=False),
    dict(question="Think about the magnetic force between the magnets in each pair. Which is true?",
         hint="The images below show two pairs of magnets.", answer=1, image=True,
         choices=["The force is stronger in Pair 1.", "The force is stronger in Pair 2.", "Same in both."]),
]
FOLLOW_UP = [{"from": "human", "value": "Are you sure? Explain briefly."},
             {"from": "gpt", "value": "Yes: its talons grip and hold its prey."}]


def samples() -> list[list[dict[str, str]]]:
    """ScienceQA conversations (LLaVA's QCM-A conversion, `<image>` at the end) with a second exchange."""
    out = []
    for p in PROBLEMS:
        conv = build_conversations(p, prompt_format="QCM-A", has_image=p["image"])
        out.append(conv + FOLLOW_UP)
    return out


# What each template leaves unmasked for one reply (LLaVA's conventions, written out independently).
EXPECTED_TARGET = {
    "vicuna_v1": lambda r, eot: f" {r}{eot}",
    "mistral_instruct": lambda r, eot: f" {r}{eot}",
    "llama_2": lambda r, eot: f" {r} {eot}",
    "plain": lambda r, eot: f"{r}\n",
    "chat_template": lambda r, eot: f"{r}{eot}",
}
PAIRS = [(t, v) for t in sorted(TEMPLATES) for v in REAL_VOCABS if t != "chat_template" or v == "smollm2"]


def end_of_turn(vocab: str) -> str:
    return "<|im_end|>" if vocab == "smollm2" else "</s>"


def runs(labels: list[int]) -> list[list[int]]:
    out, cur = [], []
    for lab in [*labels, IGNORE_INDEX]:
        if lab != IGNORE_INDEX:
            cur.append(lab)
        elif cur:
            out.append(cur)
            cur = []
    return out


def test_llama2_vocabulary_reproduces_llama_cpp_reference_ids():
    tok = real_tokenizer("llama2")
    cases = llama_reference_cases()
    assert len(cases) == 46
    for text, ids in cases:
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_mistral_vocabulary_keeps_the_word_boundary_prefix():
    tok = real_tokenizer("mistral")
    assert tok.convert_ids_to_tokens(tok("Hello world", add_special_tokens=False)["input_ids"]) == [
        "▁Hello", "▁world"]
    # 32000 + <image>; pad is unk, as LLaVA pads LLaMA-family models
    assert (tok.bos_token_id, tok.eos_token_id, len(tok.get_vocab())) == (1, 2, 32001)


@pytest.mark.parametrize(("template", "vocab"), PAIRS)
def test_template_with_real_vocabulary(template, vocab):
    tok = real_tokenizer(vocab)
    image_id = tok.convert_tokens_to_ids("<image>")
    eot = end_of_turn(vocab)
    for conv in samples():
        sample = tokenize_conversation(conv, tok, template, num_image_tokens=N_IMG, max_length=8192)
        assert not sample.mismatch and not sample.overlong
        replies = [t["value"] for t in conv if t["from"] == "gpt"]
        replies = replies[:1] if template == "plain" else replies
        spans = [tok.decode(r) for r in runs(sample.labels)]
        # SentencePiece decoding drops a leading word-boundary space; the ids tests below pin it.
        assert [s.lstrip(" ") for s in spans] == [EXPECTED_TARGET[template](r, eot).lstrip(" ")
                                                  for r in replies]
        assert all(lab in (IGNORE_INDEX, tid) for tid, lab in zip(sample.input_ids, sample.labels,
                                                                  strict=True))
        has_image = "<image>" in conv[0]["value"]
        where = [i for i, t in enumerate(sample.input_ids) if t == image_id]
        assert len(where) == (N_IMG if has_image else 0)
        if where:
            assert where == list(range(where[0], where[0] + N_IMG))
        if template != "chat_template":
            # one BOS, first; llama_2 opens every later [INST] round with its own
            rounds = len(replies) if template == "llama_2" else 1
            assert sample.input_ids[0] == tok.bos_token_id
            assert sample.input_ids.count(tok.bos_token_id) == rounds
        first = next(i for i, lab in enumerate(sample.labels) if lab != IGNORE_INDEX)
        prompt = generation_prompt(conv[0]["value"], tok, template, num_image_tokens=N_IMG)
        assert prompt == sample.input_ids[:first]


# LLaVA's preprocessing of one fixed example, as ids (-200 = LLaVA's IMAGE_TOKEN_INDEX). Derived by hand
# from LLaVA's code: the slow legacy LlamaTokenizer is BOS + SentencePiece's encoding of each text piece
# between special tokens, and tokenizer_image_token tokenizes the pieces around `<image>` separately; the
# SentencePiece models are Mistral's tokenizer.model.v1 and a model built from the GGUF's pieces and
# scores, which reproduces llama.cpp's 46 reference tokenizations. `preprocess_multimodal` has put
# `<image>\n` at the front. LABELS are LLaVA's unmasked [start, end) spans.
LLAVA_Q = ("Question: Which animal's feet are adapted for grabbing prey?\nOptions: (A) bald eagle "
           "(B) phalarope\n<image>")
LLAVA_CONV = [{"from": "human", "value": LLAVA_Q}, {"from": "gpt", "value": "The answer is A."},
              {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Its talons grip."}]
LLAVA_IDS = {
    ("llama2", "vicuna_v1"): [
        1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444,
        29892, 13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889, 3148, 1001,
        29901, 29871, -200, 29871, 13, 16492, 29901, 8449, 13019, 29915, 29879, 6900, 526, 23430, 363,
        2646, 1327, 292, 758, 29891, 29973, 13, 5856, 29901, 313, 29909, 29897, 29023, 321, 20860, 313,
        29933, 29897, 1374, 284, 279, 2300, 319, 1799, 9047, 13566, 29901, 450, 1234, 338, 319, 29889, 2,
        3148, 1001, 29901, 3750, 29973, 319, 1799, 9047, 13566, 29901, 8011, 5969, 787, 330, 6472, 29889, 2],
    ("llama2", "llama_2"): [
        1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3492, 526, 263, 8444, 4086, 322, 18551, 20255,
        29889, 887, 526, 2221, 304, 2274, 278, 7604, 2793, 393, 278, 1404, 8128, 29892, 322, 6985, 278,
        1404, 411, 263, 12875, 310, 9595, 773, 5613, 4086, 29889, 13, 29966, 829, 14816, 29903, 6778, 13,
        13, -200, 29871, 13, 16492, 29901, 8449, 13019, 29915, 29879, 6900, 526, 23430, 363, 2646, 1327,
        292, 758, 29891, 29973, 13, 5856, 29901, 313, 29909, 29897, 29023, 321, 20860, 313, 29933, 29897,
        1374, 284, 279, 2300, 518, 29914, 25580, 29962, 450, 1234, 338, 319, 29889, 29871, 2, 1, 518,
        25580, 29962, 3750, 29973, 518, 29914, 25580, 29962, 8011, 5969, 787, 330, 6472, 29889, 29871, 2],
    ("llama2", "plain"): [1, -200, 450, 1234, 338, 319, 29889, 13],
    ("mistral", "vicuna_v1"): [
        1, 330, 10706, 1444, 264, 13903, 2188, 304, 396, 18278, 10895, 13892, 28723, 415, 13892, 5212,
        10865, 28725, 10537, 28725, 304, 27057, 11194, 298, 272, 2188, 28742, 28713, 4224, 28723, 2223, 725,
        28747, 28705, -200, 28705, 13, 24994, 28747, 9595, 8527, 28742, 28713, 4051, 460, 22427, 354, 7290,
        7551, 27911, 28804, 13, 4018, 28747, 325, 28741, 28731, 26128, 317, 17968, 325, 28760, 28731, 1108,
        282, 283, 1845, 8602, 8048, 12738, 28747, 415, 4372, 349, 330, 28723, 2, 2223, 725, 28747, 4315,
        28804, 8602, 8048, 12738, 28747, 7267, 5741, 1053, 16593, 28723, 2],
    ("mistral", "llama_2"): [
        1, 733, 16289, 28793, 2087, 18741, 4060, 13, 1976, 460, 264, 10865, 3842, 304, 8021, 13892, 28723,
        995, 460, 2358, 298, 2380, 272, 8809, 3036, 369, 272, 2188, 5312, 28725, 304, 6031, 272, 2188, 395,
        264, 6677, 302, 9796, 1413, 4229, 3842, 28723, 13, 28789, 700, 18741, 4060, 13, 13, -200, 28705, 13,
        24994, 28747, 9595, 8527, 28742, 28713, 4051, 460, 22427, 354, 7290, 7551, 27911, 28804, 13, 4018,
        28747, 325, 28741, 28731, 26128, 317, 17968, 325, 28760, 28731, 1108, 282, 283, 1845, 733, 28748,
        16289, 28793, 415, 4372, 349, 330, 28723, 28705, 2, 1, 733, 16289, 28793, 4315, 28804, 733, 28748,
        16289, 28793, 7267, 5741, 1053, 16593, 28723, 28705, 2],
    ("mistral", "plain"): [1, -200, 415, 4372, 349, 330, 28723, 13],
}
LLAVA_LABELS = {
    ("llama2", "vicuna_v1"): [(75, 81), (91, 98)],
    ("llama2", "llama_2"): [(91, 98), (108, 116)],
    ("llama2", "plain"): [(2, 8)],
    ("mistral", "vicuna_v1"): [(71, 77), (86, 92)],
    ("mistral", "llama_2"): [(87, 94), (104, 111)],
    ("mistral", "plain"): [(2, 8)],
}


def _as_llava(tok, sample) -> tuple[list[int], list[tuple[int, int]]]:
    image_id = tok.convert_tokens_to_ids("<image>")
    ids = [-200 if t == image_id else t for t in sample.input_ids]
    spans, start = [], None
    for i, lab in enumerate([*sample.labels, IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        if lab == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return ids, spans


@pytest.mark.parametrize(("vocab", "template"), sorted(LLAVA_IDS))
def test_token_for_token_llava_preprocessing(vocab, template):
    tok = real_tokenizer(vocab)
    sample = tokenize_conversation(LLAVA_CONV, tok, template, num_image_tokens=1, max_length=4096)
    ids, spans = _as_llava(tok, sample)
    assert not sample.mismatch
    assert ids == LLAVA_IDS[vocab, template]
    assert spans == LLAVA_LABELS[vocab, template]


def test_plain_is_llava_exact_with_a_non_legacy_conversion():
    # tokenized in one call, a non-legacy conversion would start the caption without its `▁`
    tok = real_tokenizer("mistral-nonlegacy")
    sample = tokenize_conversation(LLAVA_CONV, tok, "plain", num_image_tokens=1, max_length=4096)
    assert _as_llava(tok, sample) == (LLAVA_IDS["mistral", "plain"], LLAVA_LABELS["mistral", "plain"])


def test_vicuna_system_boundary_is_where_llava_puts_it():
    tok = real_tokenizer("mistral")
    sample = tokenize_conversation(LLAVA_CONV, tok, "vicuna_v1", num_image_tokens=1, max_length=4096)
    pieces = tok.convert_ids_to_tokens(sample.input_ids[28:33])
    assert pieces == ["▁questions", ".", "▁US", "ER", ":"]


def test_gguf_bos_eos_swap_is_repaired_from_the_file():
    tok = real_tokenizer("llama2")
    broken = type(tok).from_pretrained(tok.name_or_path)
    broken.eos_token = "<s>"  # what transformers' GGUF loader gives for LLaMA vocabularies
    with pytest.raises(UserError, match="template 'vicuna_v1'.*EOS '<s>' is also its BOS"):
        check_tokenizer(broken, "vicuna_v1")
    assert repair_gguf_special_tokens(broken, llama_gguf_file()) == ["eos"]
    assert (broken.eos_token, broken.eos_token_id) == ("</s>", 2)
    check_tokenizer(broken, "vicuna_v1")


def test_smollm2_loads_with_chatml_end_of_turn():
    tok = real_tokenizer("smollm2")
    assert (tok.eos_token, tok.bos_token) == ("<|im_end|>", "<|im_start|>")


def test_missing_end_of_turn_is_refused():
    tok = real_tokenizer("llama2")
    broken = type(tok).from_pretrained(tok.name_or_path)
    broken.eos_token = "<|im_end|>"  # not a token of LLaMA's vocabulary
    with pytest.raises(UserError, match="template 'mistral_instruct'.*not in this tokenizer's vocabulary"):
        check_tokenizer(broken, "mistral_instruct")


def test_chat_template_needs_a_chat_template():
    with pytest.raises(UserError, match="template 'chat_template'"):
        check_tokenizer(real_tokenizer("mistral"), "chat_template")


def test_a_gpt_style_single_endoftext_token_passes():
    # Phi-2's vocabulary: one <|endoftext|> is BOS, EOS and unk, and no BOS is added to a text
    from train.tokenizers import char_tokenizer

    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    tok.bos_token = tok.eos_token = tok.unk_token = "<|endoftext|>"
    assert tok("a")["input_ids"][:1] != [tok.bos_token_id]
    for template in ("vicuna_v1", "mistral_instruct", "llama_2", "plain"):
        check_tokenizer(tok, template)
