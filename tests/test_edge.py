"""ONNX export parity, the torch-free edge runtime, and the CLI around them."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from isacir.edge.payload import decode_payload
from isacir.export import ExportError, export_edge
from isacir.query import QueryEncoder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, openclip_fnd):
    torch.manual_seed(0)
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=4, image_size=96).eval()
    out = tmp_path_factory.mktemp("edge") / "edge"
    # a random tiny model sits near the gate: how close int8 stays moves with ONNX Runtime's
    # quantiser and NumPy (0.98-0.995 across releases), so the fixture asks for 0.97; the gate's
    # refusal is tested on its own below
    config = export_edge(qe, out, int8=True, foundation=openclip_fnd, min_query_cosine=0.97)
    return qe, out, config


def test_export_parity_report(exported):
    qe, out, config = exported
    v = config["verification"]
    assert v["onnx_vs_torch_max_abs_diff"] <= v["tolerance"] and v["preprocess_max_abs_diff"] == 0.0
    assert config["query_encoder_fingerprint"] == qe.fingerprint and config["num_tokens"] == 4
    assert v["int8"]["mean_token_cosine"] > 0.95 and (out / "model.int8.onnx").is_file()  # see the fixture
    assert v["int8"]["min_query_cosine"] >= v["int8"]["required_query_cosine"] == 0.97
    assert v["int8"]["query_checks"] == 3 * 4
    # int8 is its own version; fp32 is the encoder itself
    versions = config["versions"]
    assert versions["fp32"] == qe.fingerprint and versions["int8"].startswith(qe.fingerprint + "-int8-")
    assert json.loads((out / "edge.json").read_text()) == config


def test_the_int8_gate_refuses_with_the_numbers(tmp_path, openclip_fnd):
    torch.manual_seed(0)
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=4, image_size=96).eval()
    with pytest.raises(ExportError, match=r"least cosine to the fp32 query 0\.9\d+ .* below the required 1\.0"):
        export_edge(qe, tmp_path / "edge", int8=True, foundation=openclip_fnd, min_query_cosine=1.0)
    assert not (tmp_path / "edge").exists()  # nothing written
    with pytest.raises(ExportError, match="needs the foundation"):
        export_edge(qe, tmp_path / "edge", int8=True)


def test_edge_runner_matches_pytorch_on_image_files(exported, tmp_path):
    from isacir.edge import EdgeEncoder, decode_payload

    qe, out, _ = exported
    paths = []
    for i, (mode, size) in enumerate([("RGB", (120, 90)), ("CMYK", (80, 140)), ("RGBA", (96, 96))]):
        img = Image.fromarray((np.random.default_rng(i).random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(
            mode
        )
        p = tmp_path / f"im{i}.{'jpg' if mode == 'CMYK' else 'png'}"
        img.save(p)
        paths.append(p)
    enc = EdgeEncoder(out)
    got = enc.tokens(paths)
    with torch.no_grad():
        ref = qe(torch.stack([qe.preprocess(p) for p in paths])).numpy()
    assert np.abs(got - ref).max() <= 1e-3 * np.sqrt((ref**2).mean())
    payload = decode_payload(enc.payload(paths[0], "int8"), expected_dim=qe.word_dim, expected_tokens=4)
    assert payload.fingerprint == qe.fingerprint


def test_symmetric_methods_do_not_export(tmp_path, openclip_fnd):
    qe = QueryEncoder.create(openclip_fnd, method="pic2word")
    with pytest.raises(ExportError, match="cannot run on a device"):
        export_edge(qe, tmp_path / "x")
    assert not (tmp_path / "x").exists()


NO_TORCH = textwrap.dedent(
    r"""
    import importlib.abc, sys
    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision", "timm", "open_clip", "transformers")):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, BlockTorch())
    from isacir.edge import EdgeEncoder, decode_payload
    enc = EdgeEncoder(sys.argv[1])
    data = enc.payload(sys.argv[2], "int8")
    p = decode_payload(data)
    print(len(data), p.tokens.shape[0], p.tokens.shape[1], p.fingerprint, "torch" in sys.modules)
    """
)


def test_edge_runtime_imports_and_runs_without_torch(exported, tmp_path):
    qe, out, _ = exported
    img = tmp_path / "ref.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(img)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(out), str(img)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    size, n, d, fp, torch_loaded = proc.stdout.split()
    assert (int(n), int(d), fp, torch_loaded) == (4, qe.word_dim, qe.fingerprint, "False")
    assert int(size) == 26 + 4 * 4 + 4 * qe.word_dim + 4


def test_cli_export_and_encode(tmp_path, openclip_fnd):
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=64)
    qe.save_pretrained(tmp_path / "qe")
    img = tmp_path / "ref.jpg"
    Image.new("RGB", (70, 50), (10, 200, 30)).save(img)

    def run(*args):
        p = subprocess.run(
            [sys.executable, "-m", "isacir.cli", *args], capture_output=True, text=True, env=ENV, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return p

    cfg = json.loads(
        run(
            "export-edge", "--query-encoder", str(tmp_path / "qe"), "--out", str(tmp_path / "edge")
        ).stdout.splitlines()[-1]
    )
    assert cfg["files"] == {"fp32": "model.onnx"}
    # what ships and what a service account loads is readable as a plain mkdir would be, not 0700
    (tmp_path / "plain").mkdir()
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    assert (tmp_path / "edge").stat().st_mode & 0o777 == plain
    assert (tmp_path / "qe").stat().st_mode & 0o777 == plain
    res = run(
        "edge-encode",
        "--edge",
        str(tmp_path / "edge"),
        "--image",
        str(img),
        "--dtype",
        "fp16",
        "--out",
        str(tmp_path / "p.bin"),
        "--json",
    )
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert obj["dtype"] == "fp16" and obj["num_tokens"] == 2 and obj["bytes"] == (tmp_path / "p.bin").stat().st_size


def test_edge_encode_verb_runs_without_torch(exported, tmp_path):
    """``pip install isacir[edge]`` has no torch: the command line must not import it to start."""
    qe, out, _ = exported
    img = tmp_path / "ref.png"
    Image.new("RGB", (64, 48), (30, 30, 200)).save(img)
    blocked = NO_TORCH.split("from isacir.edge import")[0]
    run_cli = blocked + textwrap.dedent(
        """
        from isacir.cli import main
        sys.argv = ["isacir", *sys.argv[1:]]
        try:
            main()
        finally:
            print("torch loaded:", "torch" in sys.modules)
        """
    )
    payload = tmp_path / "q.bin"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            run_cli,
            "edge-encode",
            "--edge",
            str(out),
            "--image",
            str(img),
            "--dtype",
            "int8",
            "--out",
            str(payload),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch loaded: False" in proc.stdout
    assert decode_payload(payload.read_bytes()).fingerprint == qe.fingerprint
