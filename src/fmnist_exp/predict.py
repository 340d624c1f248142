"""`python -m fmnist_exp.predict inputs=photos/ [model_uri=best] [out=preds.csv]` (options: conf/predict.yaml)

Runs a trained model on new images (see inputs.py for the formats, pictures.py for the picture
rule, and inference.py for model_uri). Prints one line per image (input, class, probability, top 3)
and, when the inputs carry labels, the accuracy over the labelled ones.

Exit status: 0 when every input was labelled; 1 when some pictures could not be read (each is named
on stderr, the rest are labelled and written as usual); 2 for bad options or when nothing could be
read.
"""

import sys
from pathlib import Path

from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import printable


def run(cfg: DictConfig) -> int:
    paths = checks.check_predict(cfg)
    import pandas as pd  # the work's imports, once the options passed their checks (app.py)

    from fmnist_exp import inference
    from fmnist_exp.data.inputs import read_inputs

    model = inference.load(cfg.model_uri, cfg.tracking_uri, cfg.experiment_name, cfg.dataset)
    found = read_inputs(paths, model.class_names)
    table = inference.predict_table(model, found.names, found.images, found.labels, cfg.batch_size)
    show = cfg.show
    shown = table.head(show).copy()  # names from outside: printed without their control characters
    for column in ("input", "class_name", "top3"):
        shown[column] = shown[column].map(printable)
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(shown.to_string(index=False))
    if len(table) > show:
        print(f"... {len(table) - show} more rows" + (" (all in out=)" if cfg.out else ""))
    if (acc := inference.accuracy(table)) is not None:
        print(f"accuracy {acc[0]:.4f} on {acc[1]} labelled inputs")
    print(f"model {model.uri}")
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        print(f"wrote {printable(out)} ({len(table)} rows)")
    for message in found.failed:
        print(f"skipped: {printable(message)}", file=sys.stderr)
    if found.failed:
        print(f"{len(found.failed)} input(s) could not be read; the other {len(table)} are labelled above.",
              file=sys.stderr)  # fmt: skip
    return 1 if found.failed else 0


main = hydra_app("predict", run)

if __name__ == "__main__":
    raise SystemExit(main())
