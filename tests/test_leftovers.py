"""Small CLI fixes: ``fastdehaze export`` never replaces its OUTPUT without --overwrite."""
import torch

from fastdehaze import cli
from fastdehaze.nn import UNet, load_model, model_spec
from fastdehaze.train.checkpoint import save_checkpoint


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    m = UNet(width=4, levels=1, blocks=1)
    save_checkpoint({"model": m.state_dict(), "spec": model_spec(m), "step": seed, "config": {}}, path)
    return m


def test_export_refuses_to_overwrite_without_flag(tmp_path, capsys):
    ckpt, out = tmp_path / "step_1.pt", tmp_path / "model.safetensors"
    _checkpoint(ckpt, 1)
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    m2 = _checkpoint(ckpt, 2)
    rc = cli.main(["export", str(ckpt), str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(out) in err and "--overwrite" in err, err
    assert out.read_bytes() == first                         # untouched
    assert cli.main(["export", str(ckpt), str(out), "--overwrite"]) == 0
    got = load_model(out)
    for k, v in m2.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
