"""ONNX Runtime against torch eager on the same exported model and the same study, as a ratio.

    .venv/bin/python bench/bench_model.py [--checkpoint runs/.../final.pt] [--model-dir models/demo]

The study is generated: two 15-slice 512x512 sagittal series (T2, T1), the worker's target case. Both
runtimes get the same preprocessed input, 2 threads, and are timed end to end per study (median of
--repeats) and per slice for the image encoder alone (batch of one slice).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / ".demo_build" / "run" / "final.pt")
    parser.add_argument("--model-dir", type=Path, default=None, help="exported from --checkpoint (default: export now)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from model_export.configs import RunConfig
    from model_export.data import read_generated_study
    from model_export.export import export_model
    from model_export.model.network import load_checkpoint
    from model_export.model.predict import predict_volume
    from model_export.synth import SynthConfig, generate_study
    from service.infer.model import OnnxModel, model_input

    if not args.checkpoint.is_file():
        print(f"no checkpoint at {args.checkpoint}: run `lumbar-ai build-demo-model` or pass --checkpoint")
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = SynthConfig(use_spider=False, include_axial=False, include_localizer=False, matrix=(512, 512),
                             slices=(15, 15))
        generate_study(tmp / "study", seed=1, config=config)
        study = read_generated_study(tmp / "study")
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = tmp / "model"
            export_model(args.checkpoint, model_dir, parity_study=study)
        torch_model, ckpt = load_checkpoint(args.checkpoint)
        view = RunConfig.from_dict(ckpt["run"]).model.view()
        onnx_model = OnnxModel.load(model_dir, intra_op_threads=args.threads)

        ort_s = median_time(lambda: onnx_model.predict(study.t2, study.t1, study.pixel_spacing), args.repeats)
        torch_s = median_time(lambda: predict_volume(torch_model, study.t2, study.t1, view), args.repeats)
        one = model_input(study.t2[:1], study.t1[:1], view.survey_size)
        encoder = onnx_model.graphs["image_encoder.onnx"]
        ort_slice = median_time(lambda: encoder.run(image=one), args.repeats * 3)
        with torch.no_grad():
            torch_slice = median_time(lambda: torch_model.image_encoder(torch.from_numpy(one)), args.repeats * 3)
        agreement = float(np.mean(onnx_model.predict(study.t2, study.t1, study.pixel_spacing).labels
                                  == predict_volume(torch_model, study.t2, study.t1, view).labels))
        timings = onnx_model.predict(study.t2, study.t1, study.pixel_spacing).timings

    figures = {
        "study": f"T2 + T1, {study.t2.shape[0]} slices of {study.t2.shape[1]}x{study.t2.shape[2]}",
        "threads": args.threads, "model_input": view.to_card(),
        "onnxruntime_s_per_study": round(ort_s, 3), "torch_eager_s_per_study": round(torch_s, 3),
        "speedup_onnxruntime_over_torch": round(torch_s / ort_s, 2),
        "image_encoder_ms_per_slice_onnxruntime": round(ort_slice * 1000, 1),
        "image_encoder_ms_per_slice_torch": round(torch_slice * 1000, 1),
        "onnx_stage_timings_s": {k: round(v, 3) for k, v in timings.items()},
        "label_agreement": round(agreement, 5),
    }
    for key, value in figures.items():
        print(f"{key:42s} {value}")
    print(f"target: ONNX Runtime >= 1.5x faster than torch eager -> "
          f"{'met' if figures['speedup_onnxruntime_over_torch'] >= 1.5 else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
