"""Leverage, centred-correlation and D2-Pruning against brute-force references; their CLI and options."""

from __future__ import annotations

import numpy as np
import pytest

from curate import d2pruning
from curate.correlation import centred_correlation, redundancy_scores
from curate.d2pruning import d2_pruning, forward_messages, nearest_neighbors, undirected_edges
from curate.leverage import energy_rank, leverage, leverage_scores
from curate.registry import check_options
from datasets_spec.errors import UserError
from tests.cli_helpers import run_app
from tests.curate_helpers import copy_workspace


def _data(n: int = 60, d: int = 12, seed: int = 0) -> np.ndarray:
    """Anisotropic rows (decaying column scales) with an offset mean, so centring and the rank matter."""
    rng = np.random.default_rng(seed)
    scales = 0.7 ** np.arange(d)
    return (rng.standard_normal((n, d)) * scales + 3.0).astype(np.float32)


# --- leverage ---------------------------------------------------------------------------------------


def _pinv_leverage(x: np.ndarray, energy: float, center: bool) -> tuple[np.ndarray, int]:
    """diag(X_r (X_r^T X_r)^+ X_r^T) with X_r the rank-r truncated SVD of the (centred) matrix."""
    xc = x.astype(np.float64) - (x.mean(axis=0, dtype=np.float64) if center else 0.0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    r = int(np.argmax(share >= energy - 1e-12)) + 1
    x_r = (u[:, :r] * s[:r]) @ vt[:r]
    return np.diag(x_r @ np.linalg.pinv(x_r.T @ x_r) @ x_r.T), r


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("center", [True, False])
def test_leverage_equals_the_pseudo_inverse_projection(energy: float, center: bool) -> None:
    x = _data()
    scores, rank = leverage_scores(x, energy=energy, center=center)
    expected, expected_rank = _pinv_leverage(x, energy, center)
    assert rank == expected_rank
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)
    picks = leverage(x, 10, energy=energy, no_center=not center)
    assert picks.tolist() == np.argsort(-expected, kind="stable")[:10].tolist()


def test_energy_rank_by_hand() -> None:
    # squared singular values 9, 4, 1, 0.25 (sum 14.25): shares 0.632, 0.912, 0.982, 1
    values = np.array([9.0, 4.0, 1.0, 0.25])
    assert [energy_rank(values, e) for e in (0.6, 0.7, 0.9, 0.95, 0.99, 1.0)] == [1, 2, 2, 3, 4, 4]
    assert energy_rank(np.array([4.0, 1e-30]), 1.0) == 1  # below the float64 noise floor: no energy


def test_leverage_of_an_orthonormal_design_is_its_row_norms() -> None:
    """With X = U S V^T built by hand (columns of U orthogonal to 1, so centring changes nothing)."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(np.column_stack([np.ones(40), rng.standard_normal((40, 4))]))
    u = q[:, 1:]
    v, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    x = (u * np.array([3.0, 2.0, 1.0, 0.5])) @ v.T
    scores, rank = leverage_scores(x, energy=0.9)
    assert rank == 2
    np.testing.assert_allclose(scores, (u[:, :2] ** 2).sum(axis=1), atol=1e-10)


# --- centred correlation ----------------------------------------------------------------------------


@pytest.mark.parametrize("recentre", [True, False])
def test_redundancy_equals_the_mean_pairwise_centred_cosine(recentre: bool) -> None:
    x = _data(n=30, d=6, seed=1).astype(np.float64)
    c = x - x.mean(axis=0) if recentre else x
    expected = []
    for i in range(len(x)):
        norms = np.linalg.norm(c, axis=1)
        expected.append(np.mean([c[i] @ c[j] / (norms[i] * norms[j]) for j in range(len(x)) if j != i]))
    np.testing.assert_allclose(redundancy_scores(x, recentre=recentre), expected, atol=1e-12)
    picks = centred_correlation(x, 7, no_recentre=not recentre)
    assert picks.tolist() == np.argsort(expected, kind="stable")[:7].tolist()


def test_recentring_changes_the_choice_on_drifted_features() -> None:
    x = _data(n=200, d=8, seed=2)
    raw = centred_correlation(x, 20, no_recentre=True)
    assert set(centred_correlation(x, 20).tolist()) != set(raw.tolist())


# --- D2-Pruning -------------------------------------------------------------------------------------


def _dense_graph(x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise Euclidean distances and the symmetrised m-NN adjacency, by brute force."""
    x = x.astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    adj = np.zeros(dist.shape, dtype=bool)
    for i in range(len(x)):
        order = [j for j in np.argsort(dist[i], kind="stable") if j != i][:m]
        adj[i, order] = True
    return dist, adj | adj.T


def _dense_d2(x, s, k, m, gamma_f, gamma_r) -> tuple[np.ndarray, list[int]]:
    dist, adj = _dense_graph(x, m)
    forward = s + (np.exp(-gamma_f * dist) * adj) @ s
    current, chosen, picks = forward.copy(), np.zeros(len(s), bool), []
    w_r = np.exp(-gamma_r * dist) * adj
    for _ in range(k):
        i = int(np.argmax(np.where(chosen, -np.inf, current)))
        chosen[i] = True
        picks.append(i)
        current = current - w_r[i] * current[i]
    return forward, picks


@pytest.mark.parametrize("m,gamma_f,gamma_r", [(5, 1.0, 0.1), (3, 0.5, 2.0), (1, 1.0, 1.0)])
def test_d2_messages_and_picks_equal_the_dense_computation(m, gamma_f, gamma_r) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((70, 5)).astype(np.float32)
    s = rng.gamma(2.0, 1.0, size=70)
    expected_forward, expected_picks = _dense_d2(x, s, 25, m, gamma_f, gamma_r)
    a, b, dist = undirected_edges(x, nearest_neighbors(x, m))
    np.testing.assert_allclose(forward_messages(s, a, b, dist, gamma_f), expected_forward, rtol=1e-12)
    picks = d2_pruning(x, 25, scores=s, n_neighbors=m, gamma_forward=gamma_f, gamma_reverse=gamma_r)
    assert picks.tolist() == expected_picks


def test_d2_skips_unscored_samples_and_reports() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    s = rng.random(40)
    s[[3, 7, 11]] = np.nan
    report: dict = {}
    picks = d2_pruning(x, 37, scores=s, report=report)
    assert sorted(picks.tolist()) == [i for i in range(40) if i not in (3, 7, 11)]
    assert report["nodes"] == 37 and report["knn"] == "exact"
    with pytest.raises(UserError, match="38 is larger than the 37 pool samples that have a score"):
        d2_pruning(x, 38, scores=s)


def test_approximate_neighbours_are_deterministic_and_close(monkeypatch) -> None:
    monkeypatch.setattr(d2pruning, "EXACT_KNN_MAX", 100)
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((12, 8))  # clustered, as embeddings are (uniform noise has no cells)
    x = (centres[rng.integers(0, 12, 600)] + 0.3 * rng.standard_normal((600, 8))).astype(np.float32)
    first, again = nearest_neighbors(x, 5, seed=1), nearest_neighbors(x, 5, seed=1)
    assert first.tolist() == again.tolist()
    dist, _ = _dense_graph(x, 5)
    np.fill_diagonal(dist, np.inf)
    exact = np.argsort(dist, axis=1)[:, :5]
    recall = np.mean([len(set(first[i]) & set(exact[i])) / 5 for i in range(len(x))])
    assert recall > 0.95
    s = np.random.default_rng(7).random(600)
    assert d2_pruning(x, 50, seed=1, scores=s).tolist() == d2_pruning(x, 50, seed=1, scores=s).tolist()


# --- options, CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,options,needle", [
    ("d2-pruning", {"score": "loss", "n_neighbors": 0}, "n_neighbors must be positive"),
    ("d2-pruning", {"score": "loss", "gamma_reverse": -0.5}, "gamma must be a finite number >= 0"),
    ("d2-pruning", {"n_neighbors": 5}, "needs a score set"),
    ("leverage", {"energy": 0.0}, "energy must be in (0, 1]"),
    ("leverage", {"energy": 1.5}, "energy must be in (0, 1]"),
])
def test_bad_options_are_refused_before_any_work(strategy, options, needle) -> None:
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_options(strategy, options, where="grid")


def test_constant_embeddings_are_one_line_errors() -> None:
    x = np.ones((10, 3), dtype=np.float32)
    with pytest.raises(UserError, match="no variance after centring"):
        leverage(x, 3)
    with pytest.raises(UserError, match="row 0 equals the pool mean"):
        centred_correlation(x, 3)


def _cli(*args: str) -> tuple[int, str]:
    from curate.cli import app

    return run_app(app, list(args))


@pytest.fixture(scope="module")
def ws(embedded_workspace, tmp_path_factory):
    from curate.scores import score_workspace

    ws = copy_workspace(embedded_workspace, tmp_path_factory.mktemp("trainfree"))
    score_workspace(ws, "length")
    return ws


def _pool(ws) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from curate.embedding_sets import load_embeddings

    table = ws.read_dataset(columns=["sample_id", "split"])
    pool = np.flatnonzero(np.array(table.column("split").to_pylist()) == "train")
    matrix, _, _ = load_embeddings(ws, None)
    return matrix[pool], pool, table.column("sample_id").to_pylist()


def test_cli_leverage_and_centred_correlation_match_the_references(ws) -> None:
    from curate.shards import read_subset

    x, pool, ids = _pool(ws)
    expected_lev, _ = _pinv_leverage(x, 0.9, True)
    code, err = _cli("select", "-w", str(ws.root), "--strategy", "leverage", "--k", "12")
    assert code == 0, err
    table, manifest = read_subset(ws.shards_dir / "leverage-k12")
    assert table.column("sample_id").to_pylist() == [ids[i] for i in pool[np.argsort(-expected_lev,
                                                                                     kind="stable")[:12]]]
    assert manifest["strategy_report"]["rank"] >= 1 and "energy" not in manifest["params"]
    code, err = _cli("select", "-w", str(ws.root), "--strategy", "centred-correlation", "--k", "9")
    assert code == 0, err
    table, _ = read_subset(ws.shards_dir / "centred-correlation-k9")
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    u = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    redundancy = ((u @ u.T).sum(axis=1) - 1) / (len(u) - 1)
    assert table.column("sample_id").to_pylist() == [ids[i] for i in pool[np.argsort(redundancy,
                                                                                    kind="stable")[:9]]]


def test_cli_d2_pruning_end_to_end_and_bad_options(ws) -> None:
    from curate.scores import load_scores
    from curate.shards import read_subset

    x, pool, ids = _pool(ws)
    s = load_scores(ws, "length")[0][pool]
    _, expected = _dense_d2(x, s, 14, 5, 1.0, 0.1)
    base = ["select", "-w", str(ws.root), "--strategy", "d2-pruning", "--k", "14"]
    code, err = _cli(*base, "--score", "length")
    assert code == 0, err
    table, manifest = read_subset(ws.shards_dir / "d2-pruning-k14")
    assert table.column("sample_id").to_pylist() == [ids[i] for i in pool[expected]]
    assert manifest["scores"]["name"] == "length" and manifest["strategy_report"]["n_neighbors"] == 5
    for extra, needle in ((["--n-neighbors", "0"], "n_neighbors must be positive"),
                          ([], "needs a score set"),
                          (["--gamma-forward", "-1"], "gamma must be")):
        code, err = _cli(*base, "--score", "length", *extra) if extra else _cli(*base)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    code, err = _cli("select", "-w", str(ws.root), "--strategy", "leverage", "--k", "5", "--energy", "1.5")
    assert code == 2 and "energy must be in (0, 1]" in err
