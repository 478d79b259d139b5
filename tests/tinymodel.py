"""A tiny random Llama with a freshly trained BPE tokenizer, for fast editor tests.

Nothing is downloaded: the tokenizer is trained here on a few sentences written for it, and
the model is randomly initialised from a fixed seed. Building takes about a second.

    >>> from tinymodel import build_tiny_model
    >>> folder = build_tiny_model(tmp_path / "tiny")   # config.json, model.safetensors, tokenizer
"""

from __future__ import annotations

from pathlib import Path

CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Japan is Tokyo.
Paris is a large city on the river Seine. Rome has many old buildings and churches.
Water freezes at zero degrees and boils at one hundred degrees.
The sun rises in the east and sets in the west. The moon orbits the earth.
A spider has eight legs. A week has seven days. An hour has sixty minutes.
Two plus two is four. Three plus five is eight. Six times seven is forty two.
The quick brown fox jumps over the lazy dog. The dog ran across the park.
Bees make honey. Plants take carbon dioxide from the air and give oxygen.
The Zorblat river flows through the valley of Quenmar into the northern sea.
Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.
The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist.
Question: What is the capital of France? Answer: Paris.
Question: How many legs does a spider have? Answer: Eight.
Let's read the following passage and produce a list of implications.
Rewrite the answer below in different words. Keep every fact, name and number exactly.
She opened the door and saw a cat. He picked up the phone and said hello.
Thank you for your help. Please write a short poem about the sea.
Computers are useful because they are fast. Exercise is good for health.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE tokenizer (any text encodes; no unknown tokens) with ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny LlamaForCausalLM (hidden 64, 2 layers, 4 heads) and its tokenizer.

    Deterministic for a given seed; the folder loads with ``from_pretrained`` and with
    ``seal.editor.base.load_base(str(directory), ...)``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # With Llama's default 0.02 the tied 64-wide embeddings give logits so flat that no
        # LoRA can lower the loss much (LoRA never touches the embeddings); 0.2 makes a random
        # model that a few LoRA steps visibly teach.
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _save_tiny(model, tokenizer, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _token_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def build_tiny_gemma3(directory: Path, *, seed: int = 0) -> Path:
    """A tiny Gemma3ForCausalLM (the Gemma-3 text family): one sliding-window layer (window 8,
    shorter than the test passages, so the mask matters) and one full-attention layer, tied
    embeddings, grouped KV heads, query/key norms."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_tiny_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        initializer_range=0.2, tie_word_embeddings=True, **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _save_tiny(Gemma3ForCausalLM(config), tokenizer, directory)


def build_tiny_qwen2(directory: Path, *, seed: int = 0) -> Path:
    """A tiny Qwen2ForCausalLM (the Qwen2 family): biases on the q/k/v projections, 4 query heads
    sharing 2 KV heads, untied output layer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.2, tie_word_embeddings=False, **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _save_tiny(Qwen2ForCausalLM(config), tokenizer, directory)
