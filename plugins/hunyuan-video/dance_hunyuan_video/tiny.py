"""Tiny random HunyuanVideo (text-to-video) and SkyReels-V1 (image-to-video) checkpoints in the real
diffusers layouts, for tests and smoke runs.

Every part is the real class the models use (LlamaModel and a Llama 3 style byte-level BPE
tokenizer, CLIPTextModel and its tokenizer, AutoencoderKLHunyuanVideo,
HunyuanVideoTransformer3DModel, FlowMatchEulerDiscreteScheduler), only tiny, written with the
pipeline's ``save_pretrained`` so that loading exercises the same code path as
``hunyuanvideo-community/HunyuanVideo``. Nothing is downloaded: the tokenizers are built here.

    python -m dance_hunyuan_video.tiny OUT_DIR [--i2v]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from dance_hunyuan_video.prompting import DEFAULT_TEMPLATE

TEXT_DIM = 32  # hidden size of both tiny text encoders
LATENT_CHANNELS = 4
LLAMA_BOS, LLAMA_EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama 3's special tokens that the prompt template uses, as single added tokens.
LLAMA_SPECIALS = [LLAMA_BOS, LLAMA_EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3): contractions, letter runs with
# one leading non-letter, up to 3 digits, punctuation runs, newlines, spaces.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _template_words() -> list[str]:
    """Pre-tokenized pieces of the prompt template (special tokens removed)."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    specials = "|".join(re.escape(s) for s in LLAMA_SPECIALS)
    parts = re.split(specials, DEFAULT_TEMPLATE.replace("{}", ""))
    return [piece for part in parts for piece, _ in split.pre_tokenize_str(part)]


def llama_tokenizer() -> Any:
    """A byte-level BPE with Llama 3's pre-tokenizer, special tokens and BOS post-processor.

    Its vocabulary holds every piece of the HunyuanVideo prompt template and of the FLUX plugin's
    test word list as one token (``ignore_merges``: a piece found in the vocabulary is not split),
    as Llama 3's 128k vocabulary does, so that the template's prefix is 95 tokens long here too:
    the pipeline's ``crop_start``. Other words fall back to bytes."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from dance_flux.tiny import WORDS

    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pieces = _template_words() + [w for word in WORDS for w in (word, " " + word)]
    pieces += [" " + w.capitalize() for w in WORDS] + [w.capitalize() for w in WORDS]
    words = [to_bytes.pre_tokenize_str(p)[0][0] for p in pieces]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(dict.fromkeys(alphabet + sorted(set(words) - set(alphabet))))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in LLAMA_SPECIALS])
    bos = tok.token_to_id(LLAMA_BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A",
        pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B",
        special_tokens=[(LLAMA_BOS, bos)],
    )
    # Right padding: HunyuanVideoTransformer3DModel masks the text tokens after the first
    # sum(mask) ones, so padding must come last.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        pad_token=LLAMA_EOS,
        padding_side="right",
        model_max_length=1024,
    )


def tiny_text_encoders(tokenizer: Any, tokenizer_2: Any) -> tuple[Any, Any]:
    """Random tiny LlamaModel (3 layers: the pipeline reads the third hidden state from the end)
    and CLIPTextModel, drawn from the global RNG (seed or fork it around the call)."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TEXT_DIM,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    )
    return llama, clip


def tiny_vae() -> Any:
    """A three-block AutoencoderKLHunyuanVideo: 4x spatial and (as the real one) 4x causal temporal
    compression, so a 9-frame 32x32 video is a 3-frame 8x8 latent."""
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=0.476986,  # the real VAE's
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
    )


def build_tiny_hunyuan(path: str | Path, seed: int = 0, i2v: bool = False) -> Path:
    """Write a tiny random checkpoint to ``path``: HunyuanVideoPipeline's layout, or with
    ``i2v`` HunyuanSkyreelsImageToVideoPipeline's (a transformer that reads the noisy latents and
    the image latents concatenated over channels). Depends only on ``seed``; the global RNG is left
    untouched."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanSkyreelsImageToVideoPipeline,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    from dance_flux.tiny import clip_tokenizer

    tokenizer, tokenizer_2 = llama_tokenizer(), clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = tiny_text_encoders(tokenizer, tokenizer_2)
        vae = tiny_vae()
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=LATENT_CHANNELS * (2 if i2v else 1),
            out_channels=LATENT_CHANNELS,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM,
            rope_axes_dim=(4, 6, 6),  # sums to the head dim, as (16, 56, 56) does for 128
        )
    # The community checkpoint's scheduler config (shift 7).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipeline_class = HunyuanSkyreelsImageToVideoPipeline if i2v else HunyuanVideoPipeline
    pipe = pipeline_class(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    # The community checkpoint's model_index.json names the Llama tokenizer class this way.
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index["tokenizer"] = ["transformers", "LlamaTokenizerFast"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random HunyuanVideo checkpoint.")
    parser.add_argument("out_dir", help="directory to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--i2v", action="store_true", help="the SkyReels-V1 image-to-video layout (skyreels-i2v)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_tiny_hunyuan(args.out_dir, seed=args.seed, i2v=args.i2v)
    kind = "SkyReels-V1 I2V" if args.i2v else "HunyuanVideo T2V"
    print(f"wrote a tiny {kind} checkpoint to {path} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
