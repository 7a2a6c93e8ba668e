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


def test_validation_batches_are_larger_and_cover_every_name_once():
    """Training keeps its batch; validation takes up to 512 names a batch, every validation name once."""
    dm = NamesDataModule(batch_size=64)
    dm.setup("fit")
    val = list(dm.val_dataloader())
    assert [x.shape[0] for x, _ in val] == [512] * 12 + [6407 - 12 * 512]
    assert sum(int((y != -100).sum()) for _, y in val) == sum(len(n) + 1 for n in dm.val_names)
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 64
