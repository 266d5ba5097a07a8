"""Deterministic random-weight Qwen2 test models for running real vLLM on a CPU, with a local tokenizer.

Two shapes, one builder (see `TEST_MODELS`):
- `tiny-qwen2`: as fast as possible (hundreds of tokens/s per stream). For tests where only speed matters.
- `paced-qwen2`: compute-bound so that it decodes at a GPU-like, steady rate (tens of tokens/s per stream
  on 2 cores): streams arrive incrementally and a kill or a disconnect lands while vLLM is still generating.

Nothing is downloaded. The builder (`build`) needs torch/transformers/tokenizers, which live in the vLLM
venv (`.venv-vllm`); `ensure_test_model()` runs from the project venv and shells out to it. Fixed seeds
make the same bytes every time; the cache is keyed by a hash of this file, so editing the builder rebuilds.

    .venv-vllm/bin/python -m app.inference.tiny_model build build/models/paced-qwen2 paced-qwen2
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "build" / "models"
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
STAMP = ".builder-sha256"

SEED = 20240917
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with Qwen2.5's tool-calling branches (the Hermes format vLLM's `hermes` parser reads): the tools listed
# in the system turn inside <tools></tools>, an assistant's calls as <tool_call>{"name", "arguments"}</tool_call>,
# tool results as <tool_response> blocks in a user turn. Content may be a string or text parts (`text`).
CHAT_TEMPLATE = (
    "{%- macro text(content) %}{%- if content is string %}{{- content }}"
    "{%- elif content %}{%- for part in content %}{%- if part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- text(messages[0]['content']) + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message['content'] %}{{- '\\n' + text(message['content']) }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- if call['function'] is defined %}{%- set call = call['function'] %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\\\"name\\\": \\\"' + call['name'] + '\\\", \\\"arguments\\\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}"
    "{%- endif %}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + text(message['content']) + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text(message['content']) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Both shapes share tokenizer, positions and tied embeddings; head_dim 64 is one the CPU attention kernels
# support (16 is not). The paced shape's per-token compute (~200 M parameters, 12 layers) is what makes
# decoding take ~14 ms a token on this machine kind; its measured rate is in app/inference/README.md.
_COMMON: dict[str, Any] = {"max_position_embeddings": 4096, "tie_word_embeddings": True, "num_key_value_heads": 2}
TEST_MODELS: dict[str, dict[str, Any]] = {
    "tiny-qwen2": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                   "num_attention_heads": 4, **_COMMON},
    "paced-qwen2": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 12,
                    "num_attention_heads": 16, **_COMMON},
}
FAST_MODEL, PACED_MODEL = "tiny-qwen2", "paced-qwen2"


def model_dir(name: str) -> Path:
    """Where `ensure_test_model(name)` keeps a built model: build/models/<name>."""
    return MODELS_DIR / name


def builder_hash(name: str) -> str:
    """Hash of this file's source and the model's name: the cache key of a built model."""
    return hashlib.sha256(Path(__file__).read_bytes() + name.encode()).hexdigest()


def is_built(dest: Path, name: str) -> bool:
    stamp = dest / STAMP
    return stamp.is_file() and stamp.read_text().strip() == builder_hash(name)


def ensure_test_model(name: str = FAST_MODEL, dest: Path | None = None) -> Path:
    """Return a directory holding test model `name`, building it (via .venv-vllm) only if missing or stale."""
    if name not in TEST_MODELS:
        raise ValueError(f"unknown test model {name!r}; choose one of {', '.join(TEST_MODELS)}")
    dest = (dest or model_dir(name)).resolve()
    if is_built(dest, name):
        return readable_by_all(dest)
    if not VLLM_PYTHON.exists():
        raise RuntimeError(f"{VLLM_PYTHON} is missing: run `make setup` to install the CPU build of vLLM")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination, then swap it in, so a crash never leaves a half-built model.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=dest.parent))
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TMPDIR": str(staging), "XDG_CACHE_HOME": str(dest.parent / ".cache")}
        proc = subprocess.run(
            [str(VLLM_PYTHON), "-m", "app.inference.tiny_model", "build", str(staging / "model"), name],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"building the test model {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        if dest.exists():
            shutil.rmtree(dest)
        (staging / "model").rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return readable_by_all(dest)


def readable_by_all(dest: Path) -> Path:
    """Random weights hold no secret, and the local vLLM runs as another user than the builder
    (localstack/unprivileged.py): every file readable (the weights are written 0600), every directory open."""
    for path in (dest, *dest.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def training_corpus(lines: int = 4000) -> list[str]:
    """A generated English-ish text, so the byte-level BPE learns real merges (fixed seed)."""
    rng = random.Random(SEED)
    words = (
        "the a an model token stream answer question chat server gateway cluster replica cache memory "
        "request response latency fast slow hello world please thanks yes no what why how when where who "
        "is are was were be been have has do does can could will would should may might must of in on at "
        "to from with for by about into over under between after before during while because although "
        "data code python kubernetes pulumi nginx redis vllm qwen gpu cpu node pod service deploy test "
        "one two three four five six seven eight nine ten hundred thousand time day night good bad new old"
    ).split()
    punct = [".", ",", "?", "!", ":", ";"]
    out = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        out.append(sentence.capitalize() + rng.choice(punct) + " " + str(rng.randint(0, 9999)))
    return out


def build(dest: Path, name: str) -> None:
    """Write tokenizer + random-weight Qwen2 `name` into `dest`. Runs in .venv-vllm (torch, transformers)."""
    shape = TEST_MODELS[name]
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    dest.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=shape["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(dest))

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
        torch_dtype="bfloat16", **shape,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(str(dest), safe_serialization=True)
    (dest / STAMP).write_text(builder_hash(name) + "\n")


def main(argv: list[str]) -> int:
    names = " | ".join(TEST_MODELS)
    if len(argv) == 3 and argv[0] == "build" and argv[2] in TEST_MODELS:
        build(Path(argv[1]), argv[2])
        return 0
    if len(argv) in (1, 2) and argv[0] == "ensure" and (len(argv) == 1 or argv[1] in TEST_MODELS):
        print(ensure_test_model(argv[1] if len(argv) == 2 else FAST_MODEL))
        return 0
    print(f"usage: python -m app.inference.tiny_model build <dir> <{names}>   (in .venv-vllm)\n"
          f"       python -m app.inference.tiny_model ensure [{names}]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
