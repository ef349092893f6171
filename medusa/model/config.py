"""Configuration of a set of Medusa heads."""

from transformers import PretrainedConfig

HEAD_TYPES = ("own_lm_head", "shared_lm_head")


class MedusaConfig(PretrainedConfig):
    """Medusa heads on top of a base causal LM.

    Args:
        medusa_num_heads: number of heads; head k (0-based) predicts the token at t+k+2 from the
            hidden state at t.
        medusa_num_layers: ResBlocks per head.
        base_model_name_or_path: where the frozen base model is loaded from.
        head_type: ``"own_lm_head"`` (each head ends in its own ``Linear(d, vocab)``, the
            FasterDecoding v1 layout) or ``"shared_lm_head"`` ("version 2": ResBlocks only, logits
            from the base model's frozen ``lm_head``). Saved as the field ``version`` ("1" or "2")
            that FasterDecoding and TGI read.
        hidden_size, vocab_size: of the base model; recorded so that a mismatch is caught at load.
    """

    model_type = "medusa_heads"

    def __init__(
        self,
        medusa_num_heads: int = 5,
        medusa_num_layers: int = 1,
        base_model_name_or_path: str | None = None,
        head_type: str = "own_lm_head",
        hidden_size: int | None = None,
        vocab_size: int | None = None,
        **kwargs,
    ):
        version = str(kwargs.pop("version", "2" if head_type == "shared_lm_head" else "1"))
        if version not in ("1", "2"):
            raise ValueError(f"Unknown Medusa heads version {version!r}: expected '1' or '2'.")
        head_type = "shared_lm_head" if version == "2" else head_type
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}.")
        if medusa_num_heads < 1 or medusa_num_layers < 0:
            raise ValueError(
                f"Need at least one head and no negative layer count, got medusa_num_heads="
                f"{medusa_num_heads}, medusa_num_layers={medusa_num_layers}."
            )
        self.medusa_num_heads = medusa_num_heads
        self.medusa_num_layers = medusa_num_layers
        self.base_model_name_or_path = base_model_name_or_path
        self.head_type = head_type
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        super().__init__(**kwargs)

    @property
    def shared_lm_head(self) -> bool:
        return self.head_type == "shared_lm_head"

    def to_dict(self) -> dict:
        output = super().to_dict()
        # TGI and FasterDecoding read the head type as "version"; keep one source of truth.
        output["version"] = "2" if self.shared_lm_head else "1"
        output.pop("head_type", None)
        return output
