"""Record a released checkpoint in weights/manifest.json: its size, sha256, status and Hub revision.

    python weights/update_manifest.py segret_tiny.ade20k runs/segret_tiny_ade20k/final --status published \
        --revision <commit printed by segret-zoo push> \
        --metrics single_scale=eval_ss/metrics.json --metrics multi_scale_flip=eval_ms/metrics.json

Run it on the very folder (or model.safetensors) that `segret-zoo push` uploaded: downloads are checked
against these numbers, so they must describe the published bytes. Then commit the manifest.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

try:
    from segret_zoo.hub.manifest import update_entry
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segret_zoo.hub.manifest import update_entry


# what the manifest keeps of a `segret-zoo eval` metrics.json (per-class tables stay in the eval folder)
SUMMARY_KEYS = ("mIoU", "mAcc", "aAcc", "num_images", "data", "split", "mode", "tta", "dtype")


def read_metrics(specs: List[str]) -> Optional[Dict[str, Any]]:
    """``LABEL=metrics.json`` pairs -> {label: summary of that file}."""
    if not specs:
        return None
    metrics: Dict[str, Any] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label:
            raise ValueError(f"--metrics takes LABEL=PATH (e.g. single_scale=eval/metrics.json), got {spec!r}")
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        metrics[label] = {k: doc[k] for k in SUMMARY_KEYS if k in doc}
    return metrics


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="checkpoint name in the manifest, e.g. segret_tiny.ade20k or rmt_t.in1k")
    parser.add_argument("path", help="the published model folder, or its model.safetensors")
    parser.add_argument("--status", default="published", choices=("published", "not_published"))
    parser.add_argument("--revision", default=None, help="Hub commit sha of the upload (pins the digest)")
    parser.add_argument("--metrics", action="append", default=[], metavar="LABEL=PATH",
                        help="metrics.json written by `segret-zoo eval --out`, under a label such as "
                             "single_scale or multi_scale_flip (repeatable)")
    parser.add_argument("--manifest", default=None, help="manifest to edit (default: weights/manifest.json)")
    args = parser.parse_args(argv)

    path = Path(args.path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        parser.error(f"{weights} does not exist")
    try:
        metrics = read_metrics(args.metrics)
        entry = update_entry(args.name, weights, status=args.status, revision=args.revision, metrics=metrics,
                             manifest_path=args.manifest)
    except (KeyError, ValueError, OSError) as err:
        parser.error(str(err))
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
