"""namegen.datamodule: the names file as a LightningDataModule."""

from namegen.data import DEFAULT_DATA
from namegen.datamodule import NamesDataModule


def test_datamodule_reads_the_shipped_file_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any directory, with no data/ folder and no network
    dm = NamesDataModule()
    dm.setup("fit")
    assert dm.path == DEFAULT_DATA
    assert len(dm.train_names) == 25626 and len(dm.val_names) == 6407 and len(dm.vocab) == 28
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[0] == 128 and x.shape == y.shape
