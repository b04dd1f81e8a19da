"""Real LLaMA-2 and Mistral vocabularies, from files that PyPI packages ship (no model hub).

- Mistral-7B v0.1/v0.2's SentencePiece model is in the `mistral-common` wheel
  (``mistral_common/data/tokenizer.model.v1``).
- LLaMA-2's 32k SentencePiece vocabulary is in llama.cpp's test data, vendored in the `llama-cpp-python`
  source distribution (``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf``), next to llama.cpp's
  reference tokenizations (``.inp`` texts, ``.out`` ids). :func:`fetch_llama_vocab` downloads the sdist
  with pip and extracts only those three files (nothing is compiled).

Converting the GGUF vocabulary to a fast tokenizer takes minutes (transformers rebuilds 32k BPE merges in
Python), so :func:`llama2_tokenizer` builds it once and keeps the result under the environment's
``share/`` directory. ``python -m train.vocabs`` fetches and builds everything (the Makefile runs it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_directory

# Pinned so the reference files (and so the tests' expected ids) never change under us.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_SPM_GGUF = "ggml-vocab-llama-spm.gguf"
LLAMA_SPM_FILES = (LLAMA_SPM_GGUF, LLAMA_SPM_GGUF + ".inp", LLAMA_SPM_GGUF + ".out")
MISTRAL_V1_MODEL = "tokenizer.model.v1"
LLAMA2_CACHE = "llama2-spm-tokenizer"


def vocab_dir() -> Path:
    """Where fetched vocabularies and built tokenizers live: ``<env>/share/llava-curate/vocabs``."""
    override = os.environ.get("LLAVA_CURATE_VOCABS")
    return Path(override) if override else Path(sys.prefix) / "share" / "llava-curate" / "vocabs"


def mistral_model_file() -> Path:
    """Mistral's v1 SentencePiece model inside the installed mistral-common package (not imported)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package 'mistral-common' is not installed; install it with "
                        "`pip install --no-deps mistral-common`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / MISTRAL_V1_MODEL
    if not path.is_file():
        raise UserError(f"{path} does not exist (mistral-common without its tokenizer data)")
    return path


def mistral_tokenizer(*, legacy: bool = True):
    """Mistral-7B's tokenizer as transformers' LlamaTokenizerFast, converted from the SentencePiece file.

    ``add_prefix_space=True`` is what the hub's tokenizer.json does (without it "Hello" loses its `▁`);
    ``legacy`` picks how text after a special token is split (see transformers PR 24565).
    """
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(vocab_file=str(mistral_model_file()), legacy=legacy, add_prefix_space=True,
                              from_slow=True)


def llama_gguf_file() -> Path:
    """The LLaMA-2 vocabulary GGUF, fetched on first use."""
    path = vocab_dir() / LLAMA_SPM_GGUF
    if not all((vocab_dir() / name).is_file() for name in LLAMA_SPM_FILES):
        fetch_llama_vocab(vocab_dir())
    return path


def fetch_llama_vocab(dest: Path) -> None:
    """Download the llama-cpp-python sdist (pip, PyPI) and extract the LLaMA vocabulary and its references."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"cannot download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}: {tail}")
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in LLAMA_SPM_FILES and member.name.endswith(f"vendor/llama.cpp/models/{name}"):
                    data = tar.extractfile(member)
                    if data is None:
                        continue
                    part = dest / f".{name}.tmp"
                    part.write_bytes(data.read())
                    part.replace(dest / name)
    missing = [n for n in LLAMA_SPM_FILES if not (dest / n).is_file()]
    if missing:
        raise UserError(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist lacks {', '.join(missing)}")


def gguf_special_ids(path: Path) -> dict[str, int]:
    """The special-token ids a GGUF file declares (``bos``, ``eos``, ``unk``, ``pad`` where present)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out: dict[str, int] = {}
    for key, name in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")]:
        field = fields.get(f"tokenizer.ggml.{name}")
        if field is not None and field.data:
            out[key] = int(field.parts[field.data[0]][0])
    return out


def repair_gguf_special_tokens(tokenizer: Any, path: Path) -> list[str]:
    """Set BOS/EOS/UNK to what the GGUF file's own metadata says; return the names that were wrong.

    transformers 4.57's GGUF converter reads both BOS and EOS from the BOS id and swaps them, so a
    LLaMA-family tokenizer loads with EOS = `<s>` (and SmolLM2 with EOS = `<|im_start|>`): every label
    sequence would end in the wrong token and generation would never stop.
    """
    fixed = []
    for key, tid in gguf_special_ids(path).items():
        if key == "pad" or tid >= len(tokenizer):
            continue  # pad is decided by train.model.prepare_tokenizer
        token = tokenizer.convert_ids_to_tokens(tid)
        if getattr(tokenizer, f"{key}_token") != token:
            setattr(tokenizer, f"{key}_token", token)
            fixed.append(key)
    return fixed


def llama2_tokenizer():
    """LLaMA-2's tokenizer, built from the GGUF vocabulary once and then loaded from the cache."""
    from transformers import AutoTokenizer

    cache = vocab_dir() / LLAMA2_CACHE
    if not (cache / "tokenizer.json").is_file():
        gguf = llama_gguf_file()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        repair_gguf_special_tokens(tok, gguf)
        with atomic_directory(cache, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(str(cache))


def llama_reference_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's reference tokenizations of the LLaMA vocabulary: (text, ids without BOS)."""
    directory = llama_gguf_file().parent
    texts = (directory / (LLAMA_SPM_GGUF + ".inp")).read_text(encoding="utf-8")
    ids = (directory / (LLAMA_SPM_GGUF + ".out")).read_text(encoding="utf-8")
    # Each case is "text\n__ggml_vocab_test__\n"; each id line ends in "\n" (an empty text, an empty line).
    inputs = texts.split("\n__ggml_vocab_test__\n")[:-1]
    outputs = [[int(x) for x in line.split()] for line in ids.split("\n")[:-1]]
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} reference texts but {len(outputs)} id lines")
    return list(zip(inputs, outputs, strict=True))


def main() -> None:
    """Fetch the LLaMA vocabulary and build the cached tokenizer (idempotent)."""
    tok = llama2_tokenizer()
    mistral_model_file()
    print(f"vocabularies ready in {vocab_dir()} (LLaMA-2: {len(tok)} tokens, EOS {tok.eos_token})")


if __name__ == "__main__":
    main()
