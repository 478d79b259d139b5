"""Tiny models and real PEFT adapters for the registry tests (no tokenizer needed)."""

from __future__ import annotations

from pathlib import Path


def build_bare_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer randomly initialised Llama saved with safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    word_tokenizer(config.vocab_size).save_pretrained(path)
    return Path(path)


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` entries (an unknown word is <unk>): a base folder
    needs one to pass `seal init`, and a 128-word vocabulary keeps the model tiny."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_lora_adapter(base_dir: Path, out_dir: Path, seed: int, r: int = 4, targets=("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA folder with non-zero B, so it changes the base's logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def adapter_logits(base_dir: Path, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits
