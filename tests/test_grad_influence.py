"""Gradient features and influence selection against references computed here: hand-checked Adam
normalisation, the Johnson-Lindenstrauss bound, traker's own projector, and per-sample gradients taken
with torch.autograd on the warm-up's tiny LoRA model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from curate.embedding_sets import load_embeddings
from curate.grad_features import Projector, adam_features
from curate.influence import influence
from curate.shards import read_subset, write_subset
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app

N_TRAIN, N_VAL, N_TEST = 16, 6, 4
IDENTITY_DIM = 10**6  # above any tiny LoRA gradient's size: the features are the gradients themselves


pytestmark = pytest.mark.usefixtures("one_thread")


def curate(*args: str) -> tuple[int, str]:
    from curate.cli import app

    return run_app(app, [str(a) for a in args])


def assert_one_line_error(result: tuple[int, str], needle: str) -> None:
    code, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """A small synthetic workspace and a 2-epoch LoRA warm-up on 8 train samples that keeps checkpoints."""
    from curate.ingest import ingest_synthetic
    from train.config import TrainConfig
    from train.runner import run_training

    ws = Workspace(tmp_path_factory.mktemp("grad") / "ws")
    ingest_synthetic(ws, seed=0, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, prompt_format="QCM-A")
    table = ws.read_dataset()
    train = np.flatnonzero(pc.equal(table.column("split"), "train").to_numpy(zero_copy_only=False))
    write_subset(ws, "warm", table, train[:8], {"strategy": "first", "k": 8, "seed": 0})
    write_subset(ws, "empty", table, train[:0], {"strategy": "first", "k": 0, "seed": 0})
    # linear decay: the two checkpoints get different learning-rate weights
    config = TrainConfig(stage="finetune", lora_r=1, epochs=2, keep_checkpoints=True, run_name="warm",
                         scheduler="linear", llm="tiny-llama", vision="tiny-clip", preset="tiny-cpu",
                         max_length=512, eval_limit=0)
    run_training(ws, ws.shards_dir / "warm", config)
    return ws


@pytest.fixture(scope="module")
def exact_sets(ws) -> dict[str, str]:
    """Unprojected SGD and Adam feature sets of every sample."""
    tags = {}
    for grad in ("sgd", "adam"):
        tags[grad] = f"exact-{grad}"
        code, err = curate("embed", "-w", ws.root, "--model", "grad:runs/warm", "--grad", grad,
                           "--proj-dim", IDENTITY_DIM, "--tag", tags[grad], "--rows-per-part", 16)
        assert code == 0, err
    return tags


# --- references ---------------------------------------------------------------------------------------


def test_adam_features_hand_checked():
    g = torch.tensor([1.0, -2.0, 0.0])
    m = torch.tensor([0.1, 0.0, 0.5])
    v = torch.tensor([0.01, 0.0, 0.04])
    # m' = 0.9 m + 0.1 g; v' = 0.999 v + 0.001 g^2; m' / sqrt(v' + 1e-8), worked out by hand
    expected = torch.tensor([0.19 / math.sqrt(0.01099 + 1e-8), -0.2 / math.sqrt(0.004 + 1e-8),
                             0.45 / math.sqrt(0.03996 + 1e-8)])
    assert torch.allclose(adam_features(g, m, v), expected, rtol=1e-6)


def test_projector_is_traker_and_keeps_inner_products_within_the_jl_bound(monkeypatch):
    from trak.projectors import BasicProjector, ProjectionType

    gen = torch.Generator().manual_seed(3)
    n, grad_dim, proj_dim = 12, 3000, 2048
    x = torch.nn.functional.normalize(torch.randn(n, grad_dim, generator=gen), dim=1)
    ours = Projector(grad_dim, proj_dim, seed=5).project(x)
    theirs = BasicProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=5, proj_type=ProjectionType.rademacher,
                            device=torch.device("cpu"), block_size=128).project(x, model_id=0)
    assert torch.allclose(ours, theirs, atol=1e-4)
    monkeypatch.setattr("curate.grad_features.CACHE_BYTES", 0)  # the block-by-block path: same matrix
    assert torch.allclose(Projector(grad_dim, proj_dim, seed=5).project(x), ours, atol=1e-4)
    # Achlioptas (2003), beta = 1: squared norms of the n^2 vectors u, u +- v kept within 1 +- eps with
    # probability >= 1 - 1/n; by polarisation inner products of unit vectors then move by at most eps.
    log_points = math.log(n * n)
    eps = next(e for e in np.arange(0.001, 1, 0.001) if proj_dim >= 6 * log_points / (e**2 / 2 - e**3 / 3))
    exact = (x @ x.T).numpy()
    projected = (ours @ ours.T).numpy() / proj_dim
    assert np.abs(projected - exact).max() <= eps
    assert np.abs(projected - exact).max() > 0  # it did project


def test_projection_dim_at_least_the_gradient_is_the_gradient():
    x = torch.randn(2, 50)
    assert torch.equal(Projector(50, 50, seed=0).project(x), x)


def test_vote_ranking_by_hand():
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.6, 0.0]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    # group 0 means: 1, 0, .7, .6 ; group 1: 0, 1, .7, 0 ; top 50% thresholds: .65 and .35
    # votes: 1, 1, 2, 0 -> row 2 first, then rows 0 and 1 (tie at score 1: dataset order), then row 3
    picks = influence(pool, 4, targets=targets, target_groups=np.array([0, 1]), vote=True, percentile=50)
    assert picks.tolist() == [2, 0, 1, 3]
    assert influence(pool, 4, targets=targets, target_groups=np.array([0, 1])).tolist() == [0, 1, 2, 3]
    # one group: mean target (.5, .5) -> .5, .5, .7, .3
    assert influence(pool, 2, targets=targets).tolist() == [2, 0]


# --- end to end against autograd -----------------------------------------------------------------------


def _reference_checkpoints(ws):
    """(path, weight) per checkpoint: mean logged learning rate since the previous one, normalised."""
    folder = ws.root / "runs" / "warm" / "stage2" / "checkpoints"
    paths = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((paths[-1] / "trainer_state.json").read_text())["log_history"]
    lrs, previous = [], 0
    for path in paths:
        step = int(path.name.split("-")[1])
        lrs.append(np.mean([e["learning_rate"] for e in history if "learning_rate" in e
                            and previous < e["step"] <= step]))
        previous = step
    assert len(paths) == 2 and lrs[0] != lrs[1]
    return list(zip(paths, np.array(lrs) / sum(lrs), strict=True))


def _reference_gradients(ws, checkpoint, adam: bool) -> dict[str, np.ndarray]:
    """sample_id -> gradient of the LoRA matrices (Adam-normalised if asked) by torch.autograd."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from train.data import LlavaCollator, prepare_dataset
    from train.model import build_llava
    from train.trainer import apply_lora, freeze_for_stage

    config = json.loads((ws.root / "runs" / "warm" / "config.json").read_text())["config"]
    from train.config import TrainConfig

    bundle = build_llava("tiny-llama", "tiny-clip", seed=0)
    freeze_for_stage(bundle.model, "pretrain")
    model = apply_lora(bundle.model, TrainConfig(**dict(config, projector_path=None)))
    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    if adam:
        state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        ids = state["param_groups"][0]["params"]  # the LoRA matrices: the first group, in model order
        assert len(ids) == len(named)
        m = torch.cat([state["state"][i]["exp_avg"].reshape(-1) for i in ids])
        v = torch.cat([state["state"][i]["exp_avg_sq"].reshape(-1) for i in ids])
    table = ws.read_dataset()
    data, _ = prepare_dataset(table, bundle, image_root=ws.image_root(), max_length=512)
    collate = LlavaCollator(bundle.tokenizer.pad_token_id)
    out = {}
    for i, sid in enumerate(table.column("sample_id").to_pylist()):
        batch = collate([data[i]])
        loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}).loss
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, [p for _, p in named])])
        if adam:
            mm, vv = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            g = mm / torch.sqrt(vv + 1e-8)
        out[sid] = (g / g.norm()).detach().numpy().astype(np.float64)
    return out


def test_influence_equals_weighted_gradient_dot_products(ws, exact_sets):
    checkpoints = _reference_checkpoints(ws)
    table = ws.read_dataset()
    ids, splits = table.column("sample_id").to_pylist(), table.column("split").to_pylist()
    subjects = table.column("subject").to_pylist()
    pool = [s for s, sp in zip(ids, splits, strict=True) if sp == "train"]
    target = [i for i, sp in enumerate(splits) if sp == "val"]
    score = np.zeros((len(pool), len(target)))
    for path, weight in checkpoints:
        train_g = _reference_gradients(ws, path, adam=True)
        target_g = _reference_gradients(ws, path, adam=False)
        score += weight * np.array([[train_g[s] @ target_g[ids[t]] for t in target] for s in pool])
    groups = sorted({subjects[t] for t in target})
    columns = [[j for j, t in enumerate(target) if subjects[t] == g] for g in groups]
    means = np.stack([score[:, c].mean(1) for c in columns], 1)
    expected = [pool[i] for i in np.argsort(-means.max(1), kind="stable")[:5]]
    code, err = curate("select", "-w", ws.root, "--strategy", "influence", "--embeddings",
                       exact_sets["adam"], "--target", "val", "--target-group-by", "subject", "--k", 5,
                       "--name", "less")
    assert code == 0, err
    rows, manifest = read_subset(ws.shards_dir / "less")
    assert rows.column("sample_id").to_pylist() == expected
    target_report = manifest["strategy_report"]["target"]
    assert target_report["kind"] == "split" and target_report["name"] == "val"
    assert target_report["rows"] == N_VAL and target_report["embeddings"]["tag"] == exact_sets["sgd"]
    # the stored features are these gradients, checkpoint i scaled by sqrt(w_i)
    matrix, set_ids, info = load_embeddings(ws, exact_sets["sgd"])
    first = _reference_gradients(ws, checkpoints[0][0], adam=False)[set_ids[0]]
    assert np.allclose(matrix[0, : len(first)], math.sqrt(checkpoints[0][1]) * first, atol=1e-5)
    assert np.allclose(info["checkpoint_weights"], [w for _, w in checkpoints])


def test_resumed_and_float16_sets_equal_an_uninterrupted_float32_set(ws):
    common = ["embed", "-w", ws.root, "--model", "grad:runs/warm", "--grad", "sgd", "--proj-dim", 64,
              "--rows-per-part", 12]
    from curate.grad_features import embed_gradients

    partial = embed_gradients(ws, model="grad:runs/warm", grad="sgd", proj_dim=64, rows_per_part=12,
                              tag="resumed", max_parts=1, show_progress=False)
    assert partial.name == ".resumed.partial"
    assert curate(*common, "--tag", "resumed")[0] == 0
    assert curate(*common, "--tag", "half", "--dtype", "float16")[0] == 0
    full, _, info = load_embeddings(ws, "resumed")
    half, _, _ = load_embeddings(ws, "half")
    assert info["dim"] == 2 * 64 and np.allclose((full**2).sum(1), 1.0, atol=1e-5)
    assert np.array_equal(half, full.astype(np.float16).astype(np.float32))


# --- bad input -------------------------------------------------------------------------------------------


def _copy_run(ws, name: str):
    dest = ws.root / "runs" / name
    shutil.copytree(ws.root / "runs" / "warm", dest)
    return dest


def _assert_nothing_written(ws, tag: str):
    assert not (ws.embeddings_dir / tag).exists() and not (ws.embeddings_dir / f".{tag}.partial").exists()


@pytest.mark.parametrize("dim", ["0", "-3"])
def test_projection_dim_must_be_positive(ws, dim):
    assert_one_line_error(curate("embed", "-w", ws.root, "--model", "grad:runs/warm", "--proj-dim", dim,
                                 "--tag", "bad"), "--proj-dim must be positive")
    _assert_nothing_written(ws, "bad")


def test_adam_features_need_the_optimiser_state(ws):
    run = _copy_run(ws, "no-optimizer")
    (sorted((run / "stage2" / "checkpoints").glob("checkpoint-*"))[-1] / "optimizer.pt").unlink()
    assert_one_line_error(curate("embed", "-w", ws.root, "--model", "grad:runs/no-optimizer", "--tag", "bad"),
                          "no optimizer.pt")
    _assert_nothing_written(ws, "bad")
    shutil.rmtree(run / "stage2" / "checkpoints")
    assert_one_line_error(curate("embed", "-w", ws.root, "--model", "grad:runs/no-optimizer", "--tag", "bad",
                                 "--grad", "sgd"), "--keep-checkpoints")
    _assert_nothing_written(ws, "bad")


def test_a_run_of_another_dataset_is_refused(ws):
    run = _copy_run(ws, "foreign")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, dataset_fingerprint="0" * 64)))
    assert_one_line_error(curate("embed", "-w", ws.root, "--model", "grad:runs/foreign", "--tag", "bad",
                                 "--grad", "sgd"), "trained on a subset of dataset 000000000000")
    _assert_nothing_written(ws, "bad")


@pytest.mark.parametrize(
    ("target", "needle"),
    [("test", "the test split"), ("empty", "no samples"), ("nosuchsplit", "no samples")],
)
def test_bad_targets_are_refused(ws, exact_sets, target, needle):
    assert_one_line_error(curate("select", "-w", ws.root, "--strategy", "influence", "--embeddings",
                                 exact_sets["adam"], "--target", target, "--k", 3, "--name", "bad"), needle)
    assert not (ws.shards_dir / "bad").exists()


def test_a_subset_with_test_samples_is_refused_as_target(ws, exact_sets):
    table = ws.read_dataset()
    test = np.flatnonzero(pc.equal(table.column("split"), "test").to_numpy(zero_copy_only=False))
    write_subset(ws, "leaky", table, test[:2], {"strategy": "first", "k": 2, "seed": 0})
    assert_one_line_error(curate("select", "-w", ws.root, "--strategy", "influence", "--embeddings",
                                 exact_sets["adam"], "--target", "leaky", "--k", 3, "--name", "bad"),
                          "holds samples of the test split")
    with pytest.raises(UserError, match="needs target samples"):
        influence(np.ones((3, 2)), 1, targets=np.ones((0, 2)))


def test_influence_grid_ships_and_validates():
    from train import ablation
    from train.ablation.grid import check_names, load_grid

    grid = load_grid(ablation.packaged_grid("scienceqa-influence"))
    check_names(grid)
    assert {s.strategy for s in grid.strategies} == {"random", "influence", "coincide", "semdedup"}
    influence_specs = [s.options for s in grid.strategies if s.strategy == "influence"]
    assert len(influence_specs) == 2 and all(o["target"] == "val" for o in influence_specs)
    assert sum(bool(o.get("vote")) for o in influence_specs) == 1


def test_the_ablation_table_names_the_target():
    from train.report import target_label

    manifest = {"strategy_report": {"target": {"kind": "split", "name": "val", "rows": 30,
                                               "group_by": "subject"}}}
    assert target_label(manifest) == "split val (30 rows, by subject)"
    assert target_label({"strategy_report": {}}) is None
