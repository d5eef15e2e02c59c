"""TEST ONLY: a stand-in for FLUX.2's text encoder (Mistral 3 Small 24B, 48 GB in bf16).

RLTest_Flux2TextStandIn gives a real CLIP object built from ComfyUI's own FLUX.2 text encoder classes
(comfy/text_encoders/flux.py: Flux2TEModel on Mistral3_24BModel, Flux2Tokenizer with its system-prompt template)
at the real width 5120, bf16, seeded random weights. Conditioning has the real width [B, T, 15360]: Flux2TEModel
stacks three hidden states of the LLM; here 2 layers give three distinct taps (the embeddings, after layer 1,
after layer 2) where the real model taps layers 10, 20 and 30. The MLP and the vocabulary are shrunk (the pack
reads neither). The pictures mean nothing.

The tokenizer: the real one is the tekken.json stored inside the 24B file, which the tests do not have, and
ComfyUI's load_mistral_tokenizer calls transformers' MistralConverter(vocab=...), whose signature transformers 5
changed to MistralConverter(vocab_file). So the Mistral tokenizer here is a subclass of ComfyUI's Mistral3Tokenizer
given the arguments ComfyUI gives it (copied), on a small tekken-format vocabulary (Mistral's first 20 special
tokens, the 256 bytes, pieces of the template's words) converted through the transformers 5 API; Flux2Tokenizer's
tokenize_with_weights is ComfyUI's own, with its template (copied: its __init__, which sets it, cannot run here).
A prompt is then 35 tokens or so, [1, 17 [SYSTEM_PROMPT], ..., 18, 3 [INST], prompt, 4 [/INST]]."""

from __future__ import annotations

import base64
import inspect
import functools
import json
import re
import tempfile
from pathlib import Path

from .random_clip import random_clip

LAYERS = 2  # three distinct taps (Flux2TEModel stacks three hidden states)
TAPS = [0, 1, 2]
INTERMEDIATE_SIZE = 1024
# Mistral 3's tekken special tokens 0-19 (rank = id); ComfyUI's tokenizer pads with 11 and starts with 1.
SPECIALS = (
    "<unk> <s> </s> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS] "
    "[TOOL_CALLS] [IMG] <pad> [IMG_BREAK] [IMG_END] [PREFIX] [MIDDLE] [SUFFIX] [SYSTEM_PROMPT] [/SYSTEM_PROMPT] "
    "[TOOL_CONTENT]"
).split()
# Flux2Tokenizer's template (set in its __init__, which the stand-in cannot run; copied from ComfyUI).
TEMPLATE = (
    "[SYSTEM_PROMPT]You are an AI that reasons about image descriptions. You give structured responses focusing on "
    "object relationships, object\nattribution and actions without speculation.[/SYSTEM_PROMPT][INST]{}[/INST]"
)
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tekken_vocabulary(text: str) -> dict:
    """A tekken.json-format vocabulary: the special tokens, the 256 bytes, then every prefix (2 bytes and longer)
    of each word of `text` with and without its leading space, so that those words are a few tokens each."""
    pieces: list[bytes] = [bytes([b]) for b in range(256)]
    known = set(pieces)
    for word in sorted(set(re.findall(r"[A-Za-z]+", text))):
        for spelled in (word, " " + word):
            raw = spelled.encode()
            for end in range(2, len(raw) + 1):
                if raw[:end] not in known:
                    known.add(raw[:end])
                    pieces.append(raw[:end])
    vocab = [{"rank": i, "token_bytes": base64.b64encode(p).decode(), "token_str": None} for i, p in enumerate(pieces)]
    specials = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(SPECIALS)]
    config = {
        "pattern": TEKKEN_PATTERN,
        "num_vocab_tokens": len(vocab) + len(specials),
        "default_vocab_size": len(vocab) + len(specials),
        "default_num_special_tokens": len(specials),
        "version": "v7",
    }
    return {"config": config, "vocab": vocab, "special_tokens": specials}


def converted_tokenizer(vocabulary: dict):
    """transformers' own conversion of a tekken vocabulary (the transformers 5 API: from a file)."""
    from transformers.integrations.mistral import MistralConverter

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tekken.json"
        path.write_text(json.dumps(vocabulary))
        return MistralConverter(vocab_file=str(path)).converted()


@functools.cache
def stand_in_classes():
    """(tokenizer class, vocabulary size): ComfyUI's Flux2Tokenizer on ComfyUI's Mistral3Tokenizer, whose
    arguments are ComfyUI's but whose tokenizer object is converted as above."""
    import comfy.sd1_clip as sd1_clip
    import comfy.text_encoders.flux as flux

    vocabulary = tekken_vocabulary(TEMPLATE + " a red apple blue ceramic cup green glass bottle yellow banana")
    tokenizer_object = converted_tokenizer(vocabulary)
    newer = "start_token" in inspect.signature(sd1_clip.SDTokenizer.__init__).parameters

    class Mistral3TokenizerStandIn(flux.Mistral3Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None, **kwargs):
            self.tekken_data = None
            sd1_clip.SDTokenizer.__init__(
                self,
                "",
                pad_with_end=False,
                embedding_size=5120,
                embedding_key="mistral3_24b",
                tokenizer_class=flux.MistralTokenizerClass,
                has_end_token=False,
                pad_to_max_length=False,
                pad_token=11,
                max_length=99999999,
                min_length=1,
                pad_left=True,
                tokenizer_args={"tokenizer_object": tokenizer_object, "legacy": False},
                tokenizer_data=tokenizer_data or {},
                **({"start_token": 1, "disable_weights": True} if newer else {"has_start_token": False}),
            )
            # the older SDTokenizer finds the start token by tokenizing "", which adds none here: Mistral's <s>
            self.start_token = 1

    class Flux2TokenizerStandIn(flux.Flux2Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            # Flux2Tokenizer.__init__ names Mistral3Tokenizer itself: its body with the stand-in instead
            sd1_clip.SD1Tokenizer.__init__(
                self,
                embedding_directory=embedding_directory,
                tokenizer_data=tokenizer_data or {},
                name="mistral3_24b",
                tokenizer=Mistral3TokenizerStandIn,
            )
            self.llama_template = TEMPLATE

    return Flux2TokenizerStandIn, vocabulary["config"]["default_vocab_size"]


def flux2_text_stand_in():
    import comfy.text_encoders.flux as flux

    tokenizer, vocab_size = stand_in_classes()
    # ComfyUI's own per-encoder overrides ("<name>_model_config", "<name>_class"). Fewer than 40 layers: no final
    # norm, as ComfyUI builds the pruned encoder.
    options = {
        "mistral3_24b_model_config": {
            "num_hidden_layers": LAYERS,
            "final_norm": False,
            "intermediate_size": INTERMEDIATE_SIZE,
            "vocab_size": vocab_size,
        },
        "mistral3_24b_class": functools.partial(flux.Mistral3_24BModel, layer=TAPS),
    }
    return random_clip(tokenizer, flux.flux2_te(), options)


class Flux2TextStandIn:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        return (flux2_text_stand_in(),)
