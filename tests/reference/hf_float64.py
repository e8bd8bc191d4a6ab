"""Transformers' Llama pieces computing in float64 when the model is float64, for the tight
float64 references of ftune's tests. Transformers computes RMSNorm, the rotary angles and the
eager attention's softmax in float32 whatever the model's dtype (the identity for a float32
model): with these patches a float64 model is float64 throughout, with Transformers' formulas
unchanged. float32 inputs take Transformers' own code path.
"""
import torch
from torch import nn
from transformers.models.llama import modeling_llama

_rms_forward = modeling_llama.LlamaRMSNorm.forward
_rotary_forward = modeling_llama.LlamaRotaryEmbedding.forward
_eager = modeling_llama.eager_attention_forward


def _rms_norm(self, hidden_states):
    if hidden_states.dtype != torch.float64:
        return _rms_forward(self, hidden_states)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary(self, x, position_ids):
    if x.dtype != torch.float64:
        return _rotary_forward(self, x, position_ids)
    dim = 2 * self.inv_freq.numel()
    base = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    if query.dtype != torch.float64:
        return _eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)  # float64, not float32
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def patch():
    """Makes Llama's RMSNorm, rotary embedding and eager attention keep float64 for float64
    inputs."""
    modeling_llama.LlamaRMSNorm.forward = _rms_norm
    modeling_llama.LlamaRotaryEmbedding.forward = _rotary
    modeling_llama.eager_attention_forward = _attention
