"""Prefect flows and deployments on top of `pipelines` (and, optionally, `tmkt.train`).

`flows.dataset`: the `build-dataset` and `refresh-dataset` flows. `flows.training`: the `train` flow.
`flows.deployments`: what `tmkt serve` (`flows.serve`) serves. `flows.server`: `tmkt server`, a local
Prefect server on 127.0.0.1. `flows.cli`: the `tmkt` command line, the top floor that reaches every
package. Modules import Prefect; `pipelines` and `storage` never do.
"""
