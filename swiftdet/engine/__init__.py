"""Training and evaluation: the iteration loop, checkpoints, logging, several processes.

A training run's folder (``--output DIR``, default ``cfg.output_dir``)::

    DIR/config.yaml            the resolved config (reload it with ``swiftdet train DIR/config.yaml``)
    DIR/metrics.jsonl          one JSON line per logged iteration (iter, lr, loss, each loss term, time,
                               data_time) and per evaluation (iter and "bbox/AP", "segm/AP", ...)
    DIR/events.out.tfevents.*  the same scalars for TensorBoard
    DIR/log.txt                everything printed on the console
    DIR/checkpoints/model_NNNNNNN.pth   the last solver.keep_last checkpoints (full training state)
    DIR/checkpoints/last.pth   the newest checkpoint (hard link, or copy)
    DIR/checkpoints/best.pth   model file of the best evaluation by test.best_metric
    DIR/model_final.pth        model file (weights, config, meta) of the finished run
    DIR/report.txt             `swiftdet train`'s summary: AP table, AP per class, drawn val_predictions/
    DIR/train.lock             held while a run trains in DIR (pid, host, command)
    DIR/previous-<time>/       files of an earlier run that died before its first checkpoint

Modules are imported where used (``swiftdet.engine.run``, ``.trainer``...), so importing this package
stays cheap.
"""
