"""A tiny random FLUX checkpoint in the real diffusers layout, for tests and smoke runs.

Every part is the real class FLUX.1 uses (CLIPTextModel, T5EncoderModel, their fast tokenizers,
AutoencoderKL, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler), only tiny, and the result
is written with ``FluxPipeline.save_pretrained`` so that loading it exercises the same code path as
``black-forest-labs/FLUX.1-dev``. No download is involved: the tokenizers are built here from a
built-in word list (BPE merges and Unigram scores learned from it) as `tokenizers` models.

    python -m dance_flux.tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

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
WORDS = _WORD_TEXT.split()

# Printable ASCII: every character of a test prompt gets a token of its own rather than <unk>.
ASCII = [chr(c) for c in range(33, 127)]
TEXT_DIM = 32  # hidden size of both tiny text encoders
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _corpus() -> list[str]:
    """Deterministic sentences made of the word list (a, of and the like come out frequent)."""
    lines = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 8)]
    lines += [f"a {WORDS[i]} of a {WORDS[(i * 7) % len(WORDS)]}" for i in range(len(WORDS))]
    return lines


def _word_counts() -> Counter[str]:
    return Counter(word for line in _corpus() for word in line.split())


def _learn_bpe_merges(counts: Counter[str], num_merges: int) -> list[tuple[str, str]]:
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


def clip_tokenizer():
    """Byte-level BPE with CLIP's normalisation, pre-tokenisation, </w> suffix and special tokens,
    wrapped in the transformers CLIP fast tokenizer (the class FLUX's tokenizer/ folder names)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import CLIPTokenizerFast

    # Vocabulary laid out as CLIP's: bytes, bytes + </w>, merges, then the two special tokens.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _learn_bpe_merges(_word_counts(), num_merges=400)
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens = list(dict.fromkeys(tokens)) + CLIP_SPECIALS
    vocab = {t: i for i, t in enumerate(tokens)}
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
        model_max_length=77,
    )


def t5_tokenizer():
    """Unigram with T5's Metaspace pre-tokenisation and ids <pad>=0, </s>=1, <unk>=2, wrapped in
    the transformers T5 fast tokenizer (no sentinel tokens: the encoder never needs them).

    Piece scores are log frequencies from the word list: whole words win over their characters,
    unknown words fall back to characters."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    counts = _word_counts()
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


def _axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (text/index, row, column) summing to the head dim, each even, like FLUX's
    (16, 56, 56) for 128."""
    side = 2 * (head_dim // 6)
    return (head_dim - 2 * side, side, side)


def tiny_text_encoders(tokenizer: Any, tokenizer_2: Any) -> tuple[Any, Any]:
    """Random tiny CLIP and T5 (v1.1) text encoders for the tiny tokenizers, drawn from the
    global RNG (seed it, or fork it, around the call)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    text_dim = TEXT_DIM
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=text_dim,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=text_dim,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as in FLUX's text_encoder_2
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    return text_encoder, text_encoder_2


def build_tiny_flux(
    path: str | Path,
    seed: int = 0,
    num_layers: int = 1,
    num_single_layers: int = 1,
    width: int = 32,
    num_attention_heads: int = 2,
    latent_channels: int = 4,
    guidance_embeds: bool = True,
) -> Path:
    """Write a tiny random FLUX checkpoint to ``path`` (diffusers layout, safetensors).

    ``width`` is the transformer's hidden size (heads x head dim). The VAE has two blocks, so its
    scale factor is 2 and a 32x32 image has a 16x16 latent (64 packed tokens). The result depends
    only on ``seed``; the global RNG is left untouched.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    if width % num_attention_heads or (width // num_attention_heads) % 2:
        raise ValueError(f"width {width} must be num_attention_heads x an even head dim")
    head_dim = width // num_attention_heads
    text_dim = TEXT_DIM

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = tiny_text_encoders(tokenizer, tokenizer_2)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=latent_channels,
            sample_size=32,
            # FLUX's VAE normalisation constants and its lack of quant convs.
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=latent_channels * 4,  # 2x2 packed latent patches
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=text_dim,  # T5 d_model
            pooled_projection_dim=text_dim,  # CLIP hidden size
            guidance_embeds=guidance_embeds,
            axes_dims_rope=_axes_dims(head_dim),
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random FLUX checkpoint.")
    parser.add_argument("out_dir", help="directory to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--num-single-layers", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_tiny_flux(
        args.out_dir,
        seed=args.seed,
        num_layers=args.num_layers,
        num_single_layers=args.num_single_layers,
        width=args.width,
    )
    print(f"wrote a tiny FLUX checkpoint to {path} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
