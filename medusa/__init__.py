"""medusa-llm: Medusa decoding heads on stock Hugging Face causal LMs (Cai et al., arXiv 2401.10774)."""

__version__ = "0.2.0"
