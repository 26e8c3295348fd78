"""Settings experiments: grids over any generation settings, timed, compared and exported.

- `axes`: the settings an axis can vary and A1111's X/Y/Z value syntax (`1-9 (+2)`, `0.5-1 [3]`);
- `plan`: the experiment definition (JSON round trip) and the checked plan of cells, run order;
- `runner`: cells through `PipelineManager.generate`, warm-up, repeats, progress, cancel;
- `fidelity`: PSNR, SSIM (Wang et al.) and ArcFace similarity against the baseline cell;
- `report`: the labelled grid PNG, the per-cell table, plot data, CSV/JSON export;
- `cli`: `app.py experiment --config FILE`.
"""
