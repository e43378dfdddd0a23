"""FIRM-Bench: evaluate any critic against human scores.

- `firm.bench.records`: `BenchItem`, `HumanScore`, `Prediction`.
- `firm.bench.loaders`: our JSONL bench layout (`load_bench`, `write_bench`, `publish_bench`) and
  `import_firm_release` for the public FIRM-Bench release.
- `firm.bench.metrics`: MAE (pooled overall), accuracy, within-1, Pearson, Spearman, bias, bootstrap CI, confusion,
  parse-failure policy (`worst` | `exclude`); `compute_report`.
- `firm.bench.scoring`: `score_files` (what `firmctl bench score` runs).
- `firm.bench.backends`: `CriticBackend` and its implementations (local critic, OpenAI-compatible endpoint, Triton
  reward service, random baseline); `make_backend` parses `--critic`.
- `firm.bench.runner`: `run_bench` (batched, resumable); `firm.bench.report`: report.json/md/html + plots;
  `firm.bench.synthetic`: `make_synthetic_bench`.
"""
