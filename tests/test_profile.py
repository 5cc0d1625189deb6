"""Efficiency profiling: FLOP conventions, the profile JSON and the fidelity table."""

import json

import pytest
import torch
import torch.nn as nn
from fvcore.nn import parameter_count

from logvmamba import create_model
from logvmamba.data import DATASETS
from logvmamba.models.mamba_layer import Mamba
from logvmamba.ops import selective_scan
from logvmamba.profiling import JUSTIFIED_UNCOUNTED_OPS, SCHEMA, count_model_flops, input_spec, profile_model
from logvmamba.profiling.fidelity import _compare, fidelity_rows, load_published, reference_path
from logvmamba.reporting.collect import load_reference
from logvmamba.profile import main as profile_main
from logvmamba.profiling.runtime import measure


def test_single_conv_is_one_flop_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    out = count_model_flops(conv, torch.randn(1, 3, 8, 8))
    macs = 8 * 3 * 3 * 3 * 8 * 8  # out channels x in channels x kernel x output pixels
    assert out["fvcore_total"] == out["mac_ops"] == macs
    assert out["flop_counter"]["total"] == 2 * macs and out["flop_counter"]["ratio_to_2x_mac_ops"] == 1
    assert out["scan"] == 0 and out["unjustified"] == {} and out["uncounted"]["ops"] == {}


class _Scan(nn.Module):
    def __init__(self, d, n, with_z):
        super().__init__()
        self.A = nn.Parameter(-torch.rand(d, n))
        self.D = nn.Parameter(torch.ones(d))
        self.with_z = with_z

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, self.A, B, C, D=self.D, z=z if self.with_z else None, delta_softplus=True)


@pytest.mark.parametrize("with_z", [True, False])
def test_single_scan_follows_the_vmamba_convention(with_z):
    b, d, n, L = 2, 4, 3, 10
    inputs = (torch.randn(b, d, L), torch.rand(b, d, L), torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(b, d, L))
    out = count_model_flops(_Scan(d, n, with_z).eval(), inputs)
    expected = 9 * b * L * d * n + b * d * L + (b * d * L if with_z else 0)  # scan, D skip, z gate
    assert out["scan"] == out["fvcore_total"] == expected
    assert out["mac_ops"] == 0 and out["flop_counter"]["total"] == 0  # FlopCounterMode does not see the scan
    assert out["flop_counter"]["ratio_to_2x_mac_ops"] is None


def test_mamba_block_flops_by_hand():
    torch.manual_seed(0)
    block = Mamba(8, d_state=4).eval()  # E = 16, dt_rank = 1
    out = count_model_flops(block, torch.randn(1, 10, 8))
    L, d, E, N, r = 10, 8, 16, 4, 1
    macs = {
        "in_proj": L * d * 2 * E,
        "conv1d": E * 4 * (L + 3),  # padded by 3 on both sides, truncated to L afterwards
        "x_proj": L * E * (r + 2 * N),
        "dt_proj": L * r * E,
        "out_proj": L * E * d,
    }
    scan = 9 * L * E * N + 2 * L * E  # with D and the z gate
    assert out["scan"] == scan
    assert out["mac_ops"] == sum(macs.values())
    assert out["fvcore_total"] == scan + sum(macs.values()) == 12352
    assert out["flop_counter"]["total"] == 2 * sum(macs.values())
    assert {"aten::silu", "aten::exp", "aten::neg"} <= set(out["uncounted"]["ops"])


class _Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1) + x


def test_unjustified_ops_are_reported_not_hidden():
    out = count_model_flops(_Cumsum(), torch.randn(2, 5))
    assert out["unjustified"] == {"aten::cumsum": 1}
    assert out["uncounted"]["ops"]["aten::add"]["flops_estimate"] == 10


def test_justification_list_is_well_formed():
    fvcore_counted = {"aten::linear", "aten::_convolution", "aten::matmul", "aten::einsum", "aten::layer_norm",
                      "aten::instance_norm", "aten::upsample_nearest2d", "aten::upsample_bilinear2d"}
    assert not fvcore_counted & set(JUSTIFIED_UNCOUNTED_OPS)
    assert "aten::scaled_dot_product_attention" not in JUSTIFIED_UNCOUNTED_OPS  # real work: must be counted
    for op, entry in JUSTIFIED_UNCOUNTED_OPS.items():
        assert op.startswith("aten::") and entry.reason and entry.basis in ("in", "out") and entry.per_element >= 0


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_input_spec_reads_the_dataset_registry(key):
    info = DATASETS[key]
    spec = input_spec(key)
    assert spec["shape"] == [1, info.in_channels, *info.patch_size]
    assert spec["out_channels"] == info.num_outputs and spec["spatial_dims"] == info.spatial_dims
    assert input_spec(key, "synthetic")["img_size"] == list(info.synthetic_patch_size)


def test_input_spec_sizes_and_errors():
    assert input_spec("brats")["shape"] == [1, 4, 128, 128, 128]
    assert input_spec("acdc")["shape"] == [1, 1, 160, 160, 16]
    assert input_spec("cell", "32x48")["img_size"] == [32, 48]
    for bad in ("32", "32x", "axb", "16x16x16"):
        with pytest.raises(ValueError, match="size"):
            input_spec("cell", bad)
    with pytest.raises(KeyError, match="unknown dataset"):
        input_spec("retina")


def test_profile_command_writes_the_json_with_provenance(tmp_path):
    path = tmp_path / "profile.json"
    # one fresh-process measurement (inference); the training step is measured in-process below
    status = profile_main(["--model", "umamba_bot_test", "--dataset", "cell", "--size", "32x32", "--runs", "1",
                           "--warmup", "1", "--modes", "inference", "--out", str(path)])
    assert status == 0
    result = json.loads(path.read_text())
    assert result["schema"] == SCHEMA and result["model"] == "umamba_bot_test" and result["device"] == "cpu"
    assert result["input"]["shape"] == [1, 3, 32, 32]
    # fvcore's parameter_count is an independent count of the same network
    net = create_model("umamba_bot_test", spatial_dims=2, in_channels=3, out_channels=3, img_size=(32, 32))
    assert result["params"]["total"] == parameter_count(net)[""] == result["params"]["trainable"]
    assert result["params"]["bytes"] == 4 * result["params"]["total"]  # float32
    flops = result["flops"]
    assert flops["fvcore_total"] > flops["mac_ops"] > 0 and flops["scan"] > 0 and flops["unjustified"] == {}
    assert flops["flop_counter"]["ratio_to_2x_mac_ops"] == pytest.approx(1.0)
    run = result["runtime"]["inference"]
    assert set(result["runtime"]) == {"inference"} and run["runs"] == 1 and run["latency_s"]["median"] > 0
    assert run["memory"]["peak_increase_bytes"] >= 0 and run["memory"]["method"] in ("VmHWM-RSS", "ru_maxrss")
    prov = result["provenance"]
    for key in ("host", "cpu", "torch", "torch_cuda", "mamba_ssm", "scan_backend", "git_commit", "date_utc", "threads"):
        assert key in prov
    assert prov["scan_backend"] == result["runtime"]["inference"]["scan_backend"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_step_measurement(optimizer):
    threads = torch.get_num_threads()  # measure() is meant for its own process and sets the thread count
    try:
        run = measure("umamba_enc_test", 3, 1, 2, [8, 8, 8], "cpu", "train", warmup=1, runs=2, threads=1,
                      optimizer=optimizer, model_kwargs={"version": 2})
    finally:
        torch.set_num_threads(threads)
    assert run["optimizer"] == optimizer and len(run["latency_s"]["all"]) == 2 and run["latency_s"]["min"] > 0
    memory = run["memory"]
    assert memory["peak_rss_bytes"] >= memory["before_bytes"] > 0 and memory["peak_increase_bytes"] >= 0


def test_profile_flops_only_and_bad_arguments():
    result = profile_model("swin_umamba_d_test", "endoscopy", size="64x64", runtime=False, cross_check=False)
    assert result["runtime"] is None and "flop_counter" not in result["flops"] and result["flops"]["scan"] > 0
    for kwargs, match in ((dict(device="tpu"), "device"), (dict(runs=0), "runs"), (dict(optimizer="lbfgs"), "lbfgs"),
                          (dict(modes=("eval",)), "modes")):
        with pytest.raises(ValueError, match=match):
            profile_model("umamba_bot_test", "cell", size="32x32", **kwargs)


def test_compare_accepts_the_published_precision():
    assert _compare(33.48, "33", 0.03)[1]  # 33M rounds to the published figure
    assert _compare(6.3, "6", 0.03)[1]  # 5 % off, but the table gives whole millions
    rel, ok = _compare(123.61, "119.8", 0.03)
    assert not ok and rel == pytest.approx(0.0318, abs=1e-4)
    assert _compare(1.0, None, 0.03) == (None, True)


def test_published_table_is_read_from_the_reference_csv():
    published = load_published(reference_path(), "swin-umamba-paper-table")
    assert published[("endoscopy", "umamba_bot")] == {"params_M": "63", "gflops": "109.7"}
    assert published[("cell", "swin_umamba_d")] == {"params_M": "27", "gflops": "48.2"}
    assert ("endoscopy", "swin_umamba_scratch") not in published  # no size figures for that row
    with pytest.raises(ValueError, match="no rows of source"):
        load_published(reference_path(), "nope")


def test_fidelity_command_lists_registered_and_missing_models(tmp_path, capsys):
    # SegResNet's rows of the published table, as source "test"; plus a figure far off and an unknown method
    reference = load_reference(reference_path())
    rows = reference[(reference.source == "swin-umamba-paper-table") & (reference.method == "segresnet")
                     & (reference.dataset == "endoscopy") & reference.metric.isin(["params_M", "gflops"])]
    assert len(rows) == 2
    csv = tmp_path / "reference.csv"
    csv.write_text(
        "source,dataset,method,metric,value,note\n"
        + "".join(f"test,endoscopy,segresnet,{r.metric},{r.value_text},\n" for r in rows.itertuples())
        + "test,cell,segresnet,params_M,100,\n"            # SegResNet has 6 M (published), not 100
        "test,endoscopy,not_a_model,params_M,1,\n"
        "test,endoscopy,not_a_model,gflops,2.5,\n"
        "other,endoscopy,segresnet,params_M,1,\n"
    )
    out = tmp_path / "fidelity.json"
    status = profile_main(["--fidelity", "--source", "test", "--reference", str(csv), "--json", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "not registered" in text and "segresnet" in text
    rows = {(r["dataset"], r["method"]): r for r in json.loads(out.read_text())}
    assert len(rows) == 3
    assert rows[("endoscopy", "segresnet")]["status"] == "ok"
    assert rows[("endoscopy", "segresnet")]["gflops"] == pytest.approx(58.9, rel=0.01)
    assert rows[("cell", "segresnet")]["status"] == "off"
    assert rows[("endoscopy", "not_a_model")]["status"] == "not registered"
    strict = profile_main(["--fidelity", "--source", "test", "--reference", str(csv), "--datasets", "cell", "--strict"])
    assert strict == 1


@pytest.mark.slow
def test_vision_mamba_baselines_match_the_published_table():
    rows = fidelity_rows(models=["umamba_bot", "umamba_enc", "swin_umamba", "swin_umamba_d"])
    by = {(r["dataset"], r["method"]): r for r in rows}
    for method in ("umamba_bot", "swin_umamba", "swin_umamba_d"):
        for dataset in ("endoscopy", "cell"):
            assert by[(dataset, method)]["status"] == "ok", by[(dataset, method)]
    for dataset in ("endoscopy", "cell"):  # the published figure leaves out U-Mamba-Enc's scans (see the report)
        assert abs(by[(dataset, "umamba_enc")]["gflops_rel"]) < 0.04
    fig5 = {r["dataset"]: r for r in fidelity_rows("logvmamba-paper-fig5", models=["umamba_enc"])}
    assert all(abs(r["gflops_rel"]) < 0.03 for r in fig5.values())  # the later release (version=2)


def test_both_modes_are_measured_in_one_worker_in_order():
    from logvmamba.profiling.runtime import run_measurements

    common = dict(model="nnunet_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=[32, 32],
                  device="cpu", warmup=0, runs=1, threads=1)
    results = run_measurements([dict(common, mode="train"), dict(common, mode="inference")])
    assert [r["mode"] for r in results] == ["train", "inference"]
    assert results[0]["optimizer"] == "sgd" and results[1]["optimizer"] is None
    assert all(r["latency_s"]["median"] > 0 and r["memory"]["malloc_mmap_threshold"] > 0 for r in results)
    with pytest.raises(ValueError, match="one thread count"):
        run_measurements([dict(common, mode="train"), dict(common, mode="inference", threads=2)])
