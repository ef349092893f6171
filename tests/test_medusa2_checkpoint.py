"""Medusa-2 checkpoints (heads + the backbone's LoRA adapter): the merge against peft's, round trips,
exact greedy decoding of the fine-tuned backbone, and clear errors."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from medusa.model import CheckpointError, MedusaModel
from tests.test_checkpoint import trained_like
from tests.tiny import tiny_model, tiny_tokenizer


def lora_trained(base, seed: int, **config):
    """``base`` wrapped by peft with random (non-zero) A and B, as if trained."""
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False, **config})
    peft_model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.2)
    return peft_model


def write_medusa2(path, arch: str = "llama", seed: int = 0, head_type: str = "shared_lm_head", num_layers: int = 1,
                  **lora_config):
    """A Medusa-2 checkpoint in ``path`` (base saved in ``path/../base-<arch>`` unless there); returns peft's merged model."""
    base_dir = path.parent / f"base-{arch}"
    if not base_dir.exists():
        tiny_model(arch).save_pretrained(base_dir)
        tiny_tokenizer().save_pretrained(base_dir)
    heads = trained_like(AutoModelForCausalLM.from_pretrained(base_dir), seed=seed, head_type=head_type,
                         num_layers=num_layers)
    heads.config.base_model_name_or_path = str(base_dir)
    heads.save_pretrained(path)
    peft_model = lora_trained(AutoModelForCausalLM.from_pretrained(base_dir), seed, **lora_config)
    peft_model.save_pretrained(path / "adapter")
    return peft_model.merge_and_unload().eval()


@pytest.mark.parametrize("arch, lora_config", [("llama", {}), ("qwen2", {"use_rslora": True}),
                                               ("mistral", {"target_modules": ["q_proj", "down_proj"]})])
def test_the_adapter_is_merged_as_peft_merges_it(tmp_path, arch, lora_config):
    reference = write_medusa2(tmp_path / "m2", arch, seed=1, **lora_config)
    model = MedusaModel.from_pretrained(str(tmp_path / "m2"))
    base = AutoModelForCausalLM.from_pretrained(tmp_path / f"base-{arch}")
    moved = 0
    for name, p in model.base_model.named_parameters():
        torch.testing.assert_close(p, reference.get_parameter(name), rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(p, base.get_parameter(name))
    assert moved == (4 if "target_modules" in lora_config else 14)  # 2 layers x the targeted Linears
    ids = torch.randint(3, 320, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model.lm_logits(model.hidden_states(ids)), reference(ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_greedy_medusa2_decoding_equals_greedy_decoding_of_the_fine_tuned_backbone(tmp_path):
    reference = write_medusa2(tmp_path / "m2", seed=2)
    model = MedusaModel.from_pretrained(str(tmp_path / "m2"))
    torch.manual_seed(3)
    prompts = [torch.randint(3, 320, (n,)) for n in (5, 9, 14)]
    expected = [reference.generate(p[None], max_new_tokens=24, do_sample=False, min_new_tokens=24, eos_token_id=None,
                                   pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert model.generate(prompts, max_new_tokens=24, eos_token_id=[]) == expected


def test_a_loaded_medusa2_model_saves_its_adapter_again(tmp_path):
    write_medusa2(tmp_path / "m2", seed=4)
    model = MedusaModel.from_pretrained(str(tmp_path / "m2"))
    model.save_pretrained(str(tmp_path / "copy"))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "copy" / "adapter" / name).exists()
    again = MedusaModel.from_pretrained(str(tmp_path / "copy"))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def break_adapter(path, case: str):
    config_file, weights_file = path / "adapter" / "adapter_config.json", path / "adapter" / "adapter_model.safetensors"
    config, state = json.loads(config_file.read_text()), load_file(weights_file)
    key = next(k for k in state if k.endswith("q_proj.lora_A.weight"))
    if case == "dora":
        config["use_dora"] = True
    elif case == "unknown module":
        state[key.replace("q_proj", "x_proj")] = state[key].clone()
        state[key.replace("q_proj", "x_proj").replace("lora_A", "lora_B")] = state[key.replace("lora_A", "lora_B")].clone()
    elif case == "half a pair":
        del state[key]
    elif case == "shape":
        state[key] = state[key][:, :-1].contiguous()
    elif case == "corrupt":
        weights_file.write_bytes(weights_file.read_bytes()[:100])
        return
    config_file.write_text(json.dumps(config))
    save_file(state, weights_file)


@pytest.mark.parametrize("case, message", [
    ("dora", r"adapter_config.json: use_dora=True is not supported"),
    ("unknown module", r"targets 'model.layers.0.self_attn.x_proj', which the base model does not have"),
    ("half a pair", r"self_attn.q_proj has lora_B but not its pair"),
    ("shape", r"q_proj of shape \(64, 63\); the base model's weight is \(64, 64\)"),
    ("corrupt", r"adapter_model.safetensors cannot be read"),
])
def test_a_broken_adapter_is_refused_with_its_file_and_fault(tmp_path, case, message):
    write_medusa2(tmp_path / "m2", seed=5)
    break_adapter(tmp_path / "m2", case)
    with pytest.raises(CheckpointError, match=message):
        MedusaModel.from_pretrained(str(tmp_path / "m2"))
