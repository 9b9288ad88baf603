"""Model definitions: one decoder covering Llama, Qwen2/3, Mistral, Gemma 2/3 and llmsql_hetero."""
from .decoder import Attention, AttentionFn, CausalLM, DecoderLayer, build_model
from .dense_attention import DenseAttention

__all__ = ["Attention", "AttentionFn", "CausalLM", "DecoderLayer", "DenseAttention", "build_model"]
