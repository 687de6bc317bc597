"""Tiny tokenizers of the real kinds, built locally (no download), for tiny test checkpoints.

A policy plugin tests against a tiny random checkpoint in its model's real layout, tokenizer
folders included. These builders give tokenizers that behave like the real ones (same
normalisation, pre-tokenisation, special tokens and post-processing) over a small vocabulary made
from a word list, wrapped in the transformers classes the real checkpoints name:

- :func:`clip_tokenizer`: CLIP's byte-level BPE with ``</w>`` word ends (``CLIPTokenizerFast``),
  merges learned from the word list.
- :func:`write_clip_vocab_files` / :func:`clip_tokenizer_from_vocab_files`: the same kind of BPE
  stored as ``vocab.json`` + ``merges.txt`` (as the Stable Diffusion repositories store it), with
  merges that build each listed word left to right.
- :func:`t5_tokenizer`: T5's Unigram with Metaspace pre-tokenisation (``T5TokenizerFast``).
- :func:`llama3_tokenizer`: Llama 3's byte-level BPE, pre-tokenizer and special tokens
  (``PreTrainedTokenizerFast``).

Everything is deterministic: the same arguments give the same tokenizer files in every process
(the bundled FLUX checkpoint ships tokenizers built here, so their output must never change).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Words the tiny tokenizers are trained on: enough for test prompts to tokenize into real pieces.
_WORD_TEXT = """
a an the of in on at with and or by to from under over near behind above beside inside
photo picture painting drawing portrait sketch render illustration image scene view close up
cat dog bird horse fish fox owl bear lion tiger rabbit mouse dragon robot astronaut knight wizard
man woman child girl boy person people crowd family friend teacher chef artist musician dancer
red green blue yellow orange purple pink black white gray brown golden silver colorful bright dark
small large tiny huge old young happy sad calm angry beautiful cute strange ancient modern
futuristic tree forest flower garden river lake ocean sea beach mountain hill desert snow
rain cloud sky sun moon star night day morning evening sunset sunrise city street house castle
tower bridge road car train boat ship plane bicycle table chair book cup window door lamp clock
mirror bed kitchen room wearing holding riding sitting standing running flying swimming
dancing reading playing looking
style oil watercolor digital cinematic lighting detailed realistic highly quality resolution sharp
soft focus depth field lens camera shot wide angle macro studio anime cartoon pixel art vintage
circle circles square squares triangle triangles two three left right top bottom
"""
WORDS: list[str] = _WORD_TEXT.split()

# Printable ASCII: every character of a test prompt gets a token of its own rather than <unk>.
ASCII = [chr(c) for c in range(33, 127)]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
CLIP_LENGTH = 77  # CLIP's position table
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
LLAMA3_BOS, LLAMA3_EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama 3's special tokens that chat-style prompt templates use, as single added tokens.
LLAMA3_SPECIALS = [
    LLAMA3_BOS,
    LLAMA3_EOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3): contractions, letter runs with
# one leading non-letter, up to 3 digits, punctuation runs, newlines, spaces.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus(words: Sequence[str]) -> list[str]:
    """Deterministic sentences made of the word list (a, of and the like come out frequent)."""
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    lines += [f"a {words[i]} of a {words[(i * 7) % len(words)]}" for i in range(len(words))]
    return lines


def word_counts(words: Sequence[str] = WORDS) -> Counter[str]:
    """How often each word occurs in a small deterministic corpus made of ``words``."""
    return Counter(word for line in _corpus(words) for word in line.split())


def learn_bpe_merges(counts: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned from word counts, CLIP style (the last symbol of a word carries
    the </w> suffix). Ties break by the pair itself, so the result is the same in every process;
    the `tokenizers` library's trainers are not (their order depends on Rust hash seeds)."""
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in splits.items():
            for pair in zip(symbols[:-1], symbols[1:], strict=True):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def whole_word_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """CLIP-style merges that build each of ``words`` left to right, in order. A word is one token
    unless an earlier word's merges regroup its letters first (then it splits into a few)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        built = symbols[0]
        for symbol in symbols[1:]:
            merges.append((built, symbol))
            built += symbol
    return list(dict.fromkeys(merges))


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """A vocabulary laid out as CLIP's: the 256 byte symbols, the same with the end-of-word mark,
    the merged symbols in merge order, then the two special tokens."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens = list(dict.fromkeys(tokens)) + CLIP_SPECIALS
    return {t: i for i, t in enumerate(tokens)}


def clip_tokenizer(words: Sequence[str] = WORDS, num_merges: int = 400) -> Any:
    """Byte-level BPE with CLIP's normalisation, pre-tokenisation, </w> suffix and special tokens,
    ``num_merges`` merges learned from ``words``, wrapped in the transformers CLIP fast tokenizer
    (the class FLUX's and HunyuanVideo's CLIP tokenizer folders name)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import CLIPTokenizerFast

    merges = learn_bpe_merges(word_counts(words), num_merges=num_merges)
    vocab = clip_vocab(merges)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            unk_token=CLIP_SPECIALS[1],
            fuse_unk=False,
        )
    )
    # The same normaliser and pre-tokeniser as transformers' CLIPTokenizer, so that the tokenizer
    # reloaded from disk (which transformers may rebuild from vocab and merges) behaves the same.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                    r"""[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    bos, eos = (vocab[t] for t in CLIP_SPECIALS)
    tok.post_processor = processors.RobertaProcessing(
        (CLIP_SPECIALS[1], eos), (CLIP_SPECIALS[0], bos), trim_offsets=False, add_prefix_space=False
    )
    return CLIPTokenizerFast(
        tokenizer_object=tok,
        bos_token=CLIP_SPECIALS[0],
        eos_token=CLIP_SPECIALS[1],
        unk_token=CLIP_SPECIALS[1],
        pad_token=CLIP_SPECIALS[1],
        model_max_length=CLIP_LENGTH,
    )


def write_clip_vocab_files(folder: Path, words: Sequence[str]) -> None:
    """A CLIP tokenizer folder as the Stable Diffusion repositories have it: ``vocab.json`` and
    ``merges.txt`` (whole-word merges of ``words``) next to the tokenizer config, no
    ``tokenizer.json``."""
    merges = whole_word_merges(words)
    vocab = clip_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tokenizer.json").unlink(missing_ok=True)


def clip_tokenizer_from_vocab_files(words: Sequence[str]) -> Any:
    """The transformers ``CLIPTokenizer`` (77 tokens, pad = end of text) read from the files
    :func:`write_clip_vocab_files` writes, as a real SD tokenizer folder is read (the path every
    transformers version takes)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_vocab_files(Path(folder), words)
        return CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_LENGTH)


def t5_tokenizer(words: Sequence[str] = WORDS) -> Any:
    """Unigram with T5's Metaspace pre-tokenisation and ids <pad>=0, </s>=1, <unk>=2, wrapped in
    the transformers T5 fast tokenizer (no sentinel tokens: the encoder never needs them).

    Piece scores are log frequencies from the word list: whole words win over their characters,
    unknown words fall back to characters."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    counts = word_counts(words)
    total = sum(counts.values()) + len(ASCII)
    pieces = [("▁" + w, math.log(counts[w] / total)) for w in sorted(counts)]
    pieces += [(c, math.log(1 / total) - 1.0) for c in ["▁", *ASCII]]
    vocab = [(t, 0.0) for t in T5_SPECIALS] + pieces
    tok = Tokenizer(Unigram(vocab, unk_id=T5_SPECIALS.index("<unk>"), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        additional_special_tokens=[],
        model_max_length=512,
    )


def _llama3_pieces(text: str) -> list[str]:
    """``text`` pre-tokenized as Llama 3 does, its special tokens removed."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    specials = "|".join(re.escape(s) for s in LLAMA3_SPECIALS)
    parts = re.split(specials, text)
    return [piece for part in parts for piece, _ in split.pre_tokenize_str(part)]


def llama3_tokenizer(
    text: str = "", words: Sequence[str] = WORDS, model_max_length: int = 1024
) -> Any:
    """A byte-level BPE with Llama 3's pre-tokenizer, special tokens and BOS post-processor,
    padding on the right with the end-of-text token.

    Its vocabulary holds every pre-tokenized piece of ``text`` (a prompt template, say; special
    tokens are added tokens) and every word of ``words`` (bare, after a space, capitalised) as one
    token (``ignore_merges``: a piece found in the vocabulary is not split), as Llama 3's 128k
    vocabulary does: a template is then as many tokens long as with the real tokenizer. Other
    words fall back to bytes."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pieces = _llama3_pieces(text) + [w for word in words for w in (word, " " + word)]
    pieces += [" " + w.capitalize() for w in words] + [w.capitalize() for w in words]
    byte_pieces = [to_bytes.pre_tokenize_str(p)[0][0] for p in pieces]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(dict.fromkeys(alphabet + sorted(set(byte_pieces) - set(alphabet))))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in LLAMA3_SPECIALS])
    bos = tok.token_to_id(LLAMA3_BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA3_BOS} $A",
        pair=f"{LLAMA3_BOS} $A {LLAMA3_BOS} $B",
        special_tokens=[(LLAMA3_BOS, bos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=LLAMA3_BOS,
        eos_token=LLAMA3_EOS,
        pad_token=LLAMA3_EOS,
        padding_side="right",
        model_max_length=model_max_length,
    )
