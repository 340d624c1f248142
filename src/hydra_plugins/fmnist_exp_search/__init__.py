"""The Optuna sweeper's name for Hydra, which instantiates sweepers only from the hydra_plugins
package and imports every module here when it starts. So this module stays light: the search itself
(and Optuna) load only when a sweep uses it (fmnist_exp/tracking/search.py)."""

from hydra.plugins.sweeper import Sweeper


class OptunaSearch(Sweeper):
    """conf/hydra/sweeper/optuna.yaml's `_target_`; its keys are fmnist_exp.tracking.search.Search's."""

    def __init__(self, **options) -> None:
        self.options = options
        self.search = None

    def setup(self, **kwargs) -> None:
        from fmnist_exp.tracking.search import Search

        self.search = Search(**self.options)
        self.search.setup(**kwargs)

    def sweep(self, arguments: list[str]):
        return self.search.sweep(arguments)
