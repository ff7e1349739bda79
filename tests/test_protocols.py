"""protocols/: label designs, splits, the SVM protocol, metrics and statistics (no torch, no bench)."""

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import softmax
from scipy.stats import f as scipy_f, t as scipy_t, ttest_1samp
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from protocols import stats
from protocols.designs import DESIGNS, apply_design
from protocols.errors import ProtocolError
from protocols.metrics import auc, fold_metrics
from sklearn.model_selection import StratifiedGroupKFold

from protocols.splits import ReferenceFoldsWarning, make_folds, stratified_group_folds
from protocols.l2svm import Sums, decision, svm_path
from protocols.svm import C_GRID, Fold, choose_c, run_fold, run_folds, validation_splits

REFERENCE_FOLDS = Path(__file__).parents[2] / "shared" / "data" / "reference-folds"


def lesion_manifest(n_lesions: int = 120, seed: int = 0) -> pd.DataFrame:
    """Lesions with 1-3 images each, one diagnosis per lesion, about 15% melanoma and 8% carcinoma."""
    rng = np.random.default_rng(seed)
    diagnoses = rng.choice(["nevus", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis"],
                           p=[0.65, 0.15, 0.08, 0.12], size=n_lesions)
    rows = [{"image_id": f"img{lesion}_{k}", "lesion_id": f"les{lesion}", "diagnosis": d}
            for lesion, d in enumerate(diagnoses) for k in range(rng.integers(1, 4))]
    return pd.DataFrame(rows)


# --- designs -------------------------------------------------------------------------------------------------

def test_designs_label_rows_and_drop_carcinomas_for_mela_vs_ben():
    m = pd.DataFrame({"image_id": list("abcde"),
                      "diagnosis": ["melanoma", "basal_cell_carcinoma", "nevus", "vascular", "melanoma"]})
    assert apply_design(m, "mal-vs-ben")["label"].tolist() == [1, 1, 0, 0, 1]
    mela = apply_design(m, "mela-vs-ben")
    assert mela["image_id"].tolist() == ["a", "c", "d", "e"] and mela["label"].tolist() == [1, 0, 0, 1]
    three = apply_design(m, "mela-vs-carc-vs-ben")
    assert three["label"].tolist() == [1, 2, 0, 0, 1]
    assert DESIGNS["mela-vs-carc-vs-ben"].classes[1] == "melanoma" == DESIGNS["mela-vs-ben"].classes[1]


def test_designs_that_do_not_fit_the_data_are_refused():
    isic_like = pd.DataFrame({"image_id": list("abc"), "diagnosis": ["melanoma", "nevus", "nevus"]})
    for protocol in ("mal-vs-ben", "mela-vs-carc-vs-ben"):
        with pytest.raises(ProtocolError, match="basal cell carcinoma"):
            apply_design(isic_like, protocol)
    assert len(apply_design(isic_like, "mela-vs-ben")) == 3
    benign_only = pd.DataFrame({"image_id": list("ab"), "diagnosis": ["nevus", "basal_cell_carcinoma"]})
    with pytest.raises(ProtocolError, match="melanoma"):
        apply_design(benign_only, "mela-vs-ben")
    retina = pd.DataFrame({"image_id": list("ab"), "diagnosis": ["retinopathy_0", "melanoma"]})
    with pytest.raises(ProtocolError, match="non-skin"):
        apply_design(retina, "mela-vs-ben")
    with pytest.raises(ProtocolError, match="unknown protocol"):
        apply_design(isic_like, "mela-vs-everything")


# --- splits --------------------------------------------------------------------------------------------------

def test_5x2_keys_partition_each_repetition_and_never_split_a_lesion():
    m = lesion_manifest()
    folds = make_folds(m, "5x2", seed=3)
    assert list(folds) == [f"r{r}f{f}" for r in range(5) for f in range(2)]
    lesion = m.set_index("image_id")["lesion_id"]
    for key, (train, test) in folds.items():
        assert not set(lesion[train]) & set(lesion[test]), key
        assert sorted(np.concatenate([train, test])) == sorted(m["image_id"])
    for r in range(5):  # fold f tests on half f: the two folds of a repetition swap roles
        assert set(folds[f"r{r}f0"][1]) == set(folds[f"r{r}f1"][0])
    assert make_folds(m, "5x2", seed=3)["r2f1"][1].tolist() == folds["r2f1"][1].tolist()
    assert set(make_folds(m, "5x2", seed=4)["r0f0"][1]) != set(folds["r0f0"][1])


def test_5x2_is_stratified_by_diagnosis():
    m = lesion_manifest(n_lesions=400).drop(columns="lesion_id")  # ungrouped: each image its own group
    share = (m["diagnosis"] == "melanoma").mean()
    diagnosis = m.set_index("image_id")["diagnosis"]
    for train, test in make_folds(m, "5x2").values():
        assert abs((diagnosis[test] == "melanoma").mean() - share) < 0.01
        assert abs(len(test) - len(m) / 2) <= 1


def test_official_split_and_its_absence():
    m = pd.DataFrame({"image_id": list("abcd"), "diagnosis": ["melanoma", "nevus"] * 2,
                      "split": ["train", "train", "test", "test"]})
    train, test = make_folds(m, "official")["official"]
    assert train.tolist() == ["a", "b"] and test.tolist() == ["c", "d"]
    with pytest.raises(ProtocolError, match="no official"):
        make_folds(m.drop(columns="split"), "official")
    with pytest.raises(ProtocolError, match="unknown split"):
        make_folds(m, "3x3")


def write_yaml(path: Path, folds: dict) -> Path:
    path.write_text(yaml.safe_dump(folds))
    return path


def test_reference_folds_report_repeated_partitions_and_unknown_images(tmp_path):
    m = pd.DataFrame({"image_id": ["AAL002", "aal004", "ABL010", "abl011", "bcl001", "bcl002"],
                      "diagnosis": ["melanoma", "nevus"] * 3})
    half_a, half_b = ["aal002.tiff", "aal004.tiff", "abl010.tiff"], ["abl011.tiff", "bcl001.tiff", "zzz999.tiff"]
    other_a, other_b = ["aal002.tiff", "abl011.tiff", "bcl002.tiff"], ["aal004.tiff", "abl010.tiff"]
    file = write_yaml(tmp_path / "protocol2.yml",
                      {"Fold_1": [half_a, half_b], "Fold_2": [half_b, half_a], "Fold_3": [other_a, other_b]})
    with pytest.warns(ReferenceFoldsWarning) as caught:
        folds = make_folds(m, "reference", reference_dir=tmp_path, protocol="mela-vs-ben")
    messages = " ".join(str(w.message) for w in caught)
    assert "Fold_2 repeats Fold_1" in messages and "zzz999" in messages
    assert list(folds) == ["ref1x1", "ref1x2", "ref3x1", "ref3x2"]
    assert folds["ref1x1"][0].tolist() == ["AAL002", "aal004", "ABL010"]  # names matched case-insensitively
    assert folds["ref1x1"][1].tolist() == ["abl011", "bcl001"]
    assert folds["ref1x2"] == (folds["ref1x1"][1], folds["ref1x1"][0])
    with pytest.warns(ReferenceFoldsWarning):
        kept = make_folds(m, "reference", reference_dir=file, keep_duplicates=True)
    assert list(kept) == ["ref1x1", "ref1x2", "ref2x1", "ref2x2", "ref3x1", "ref3x2"]


@pytest.mark.filterwarnings("ignore::protocols.splits.ReferenceFoldsWarning")
def test_reference_folds_with_bad_files_are_refused(tmp_path):
    m = pd.DataFrame({"image_id": ["a1", "a2"], "diagnosis": ["melanoma", "nevus"]})
    with pytest.raises(ProtocolError, match="pair of image-name lists"):
        make_folds(m, "reference", reference_dir=write_yaml(tmp_path / "x.yml", {"Fold_1": ["a1.tiff"]}))
    with pytest.raises(ProtocolError, match="both halves"):
        make_folds(m, "reference", reference_dir=write_yaml(tmp_path / "y.yml", {"Fold_1": [["a1"], ["a1"]]}))
    with pytest.raises(ProtocolError, match="none of this dataset's images"):
        make_folds(m, "reference", reference_dir=write_yaml(tmp_path / "protocol1.yml", {"Fold_1": [["q"], ["r"]]}))
    with pytest.raises(ProtocolError, match="--reference-dir"):
        make_folds(m, "reference")


@pytest.mark.slow
def test_real_reference_folds_have_five_distinct_partitions():
    if not REFERENCE_FOLDS.is_dir():
        pytest.skip(f"{REFERENCE_FOLDS} absent (the paper's fold files live outside the repository)")
    labels = pd.read_csv(REFERENCE_FOLDS / "protocol3.csv")  # 0 carcinoma, 1 melanoma, 2 benign
    atlas = pd.DataFrame({"image_id": labels["image"].str.capitalize(),
                          "diagnosis": labels["level"].map({0: "basal_cell_carcinoma", 1: "melanoma", 2: "nevus"})})
    for protocol in DESIGNS:
        with pytest.warns(ReferenceFoldsWarning, match="Fold_10 repeats Fold_9") as caught:
            folds = make_folds(atlas, "reference", reference_dir=REFERENCE_FOLDS, protocol=protocol)
        assert len(caught) == 1  # every listed image is in this manifest
        assert list(folds) == [f"ref{k}x{j}" for k in (1, 3, 5, 7, 9) for j in (1, 2)]
        carcinomas = set(atlas.loc[atlas["diagnosis"] == "basal_cell_carcinoma", "image_id"])
        for train, test in folds.values():
            assert not set(train) & set(test)
            assert bool(set(test) & carcinomas) == (protocol != "mela-vs-ben")  # protocol2.yml has no BCC


# --- metrics -------------------------------------------------------------------------------------------------

def test_binary_metrics_match_a_hand_computed_confusion_matrix():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([2.0, 0.5, -1.0, 1.0, 0.2, -0.5, -2.0, -3.0])
    # threshold 0: TP 2, FN 1, FP 2, TN 3; precision 2/4 and NPV 3/4 differ from SE 2/3 and SP 3/5
    m = fold_metrics(labels, scores)
    assert m["se"] == pytest.approx(2 / 3) and m["sp"] == pytest.approx(3 / 5)
    assert m["acc"] == pytest.approx(5 / 8)
    assert m["auc"] == pytest.approx(11 / 15)  # positive-over-negative pairs: 5 + 4 + 2 of 15
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)  # precision at each positive, by rank


def test_three_class_auc_is_the_mean_one_vs_one_auc_of_margin_differences_and_scale_free():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], [30, 8, 6])
    # benign stands apart; melanoma and carcinoma overlap, which one-vs-rest hides behind the benign majority
    centres = np.array([[1.5, 0, 0], [0, 1, 0.8], [0, 0.8, 1]])
    scores = rng.normal(size=(len(labels), 3)) + centres[labels]
    assert auc(labels, 10 * scores) == auc(labels, scores) == auc(labels, 0.1 * scores)
    # Hand & Till's pairwise AUC on probabilities p: for a pair i, j, p_i / (p_i + p_j) ranks it; with softmax
    # probabilities that is a logistic function of s_i - s_j, so both give one number
    p = softmax(scores, axis=1)
    pairs = [roc_auc_score(labels[both] == i, p[both, i] / (p[both, i] + p[both, j]))
             for i, j in combinations(range(3), 2) if (both := (labels == i) | (labels == j)).any()]
    assert auc(labels, scores) == pytest.approx(np.mean(pairs))
    # the old way, sklearn's one-vs-one AUC of softmaxed margins, moved with the margins' scale
    softmaxed = [roc_auc_score(labels, softmax(k * scores, axis=1), multi_class="ovo") for k in (0.1, 1, 100)]
    assert max(softmaxed) - min(softmaxed) > 0.005


def test_three_class_acc_se_sp_come_from_the_predicted_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    scores = np.array([[2, -1, -1], [0.5, 1, -1], [-1, -3, -2],  # benign: right, called melanoma, right (argmax)
                       [-1, -0.5, -2], [0, 1, 2],  # melanoma: called melanoma although every score < 0, called BCC
                       [-1, -1, 0], [1, 0, 0.5], [-1, 2, 1]], float)  # BCC: right, called benign, called melanoma
    m = fold_metrics(labels, scores)
    assert m["acc"] == pytest.approx(4 / 8)  # right: 0, 2, 3, 5
    assert m["se"] == pytest.approx(1 / 2) and m["sp"] == pytest.approx(4 / 6)  # melanoma called in 1, 3, 7
    assert m["bacc"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 3) / 3)


def test_a_test_fold_with_one_class_is_refused():
    with pytest.raises(ProtocolError, match="single class"):
        auc(np.zeros(4, int), np.arange(4.0))


# --- the SVM protocol ----------------------------------------------------------------------------------------

def separable(n: int, d: int = 20, seed: int = 0, classes: int = 2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.abs(rng.normal(size=(n, d)) + 3 * np.eye(classes, d)[y])
    return x, y


def test_no_test_image_influences_c():
    x, y = separable(300)
    rng = np.random.default_rng(5)
    first = run_fold(x[:200], y[:200], x[200:])
    second = run_fold(x[:200], y[:200], rng.normal(size=(50, x.shape[1])) * 100)
    assert first.c == second.c and first.validation_auc == second.validation_auc
    assert first.scores.shape == (100,) and second.scores.shape == (50,)
    assert fold_metrics(y[200:], first.scores)["auc"] > 0.9


def test_a_fold_scores_the_same_alone_or_beside_others_on_the_thread_pool():
    x, y = separable(6000, d=300, seed=3)
    x += np.random.default_rng(4).normal(size=x.shape) * 3  # overlapping classes: long fits that run side by side
    trains = [np.random.default_rng(k).permutation(4800)[:2400] for k in range(6)]
    folds = [Fold(x, train, y[train], np.arange(4800, 6000)) for train in trains]
    for fold, fit in zip(folds, run_folds(folds)):
        alone = run_folds([fold], n_jobs=1)[0]
        assert fit.validation_auc == alone.validation_auc
        np.testing.assert_array_equal(fit.scores, alone.scores)


def test_the_solver_is_liblinears_balanced_squared_hinge_svm():
    x, y = separable(400, d=30, seed=7)
    x += np.random.default_rng(8).normal(size=x.shape) * 2
    y = (np.arange(400) % 5 == 0).astype(int)  # imbalanced, overlapping
    x[y == 1] += 0.5
    path = svm_path(x, np.where(y == 1, 1, -1), [0.01, 1.0, 100.0])
    for c, w in zip([0.01, 1.0, 100.0], path):
        reference = LinearSVC(C=c, class_weight="balanced", dual=False, tol=1e-10, max_iter=100_000).fit(x, y)
        np.testing.assert_allclose(decision(x, w), reference.decision_function(x), atol=1e-5)


def test_balanced_class_weights_put_the_threshold_where_both_classes_are_found():
    rng = np.random.default_rng(0)
    y = (np.arange(1000) % 10 == 0).astype(int)  # 10% positives, overlapping
    x = np.abs(rng.normal(size=(1000, 10)) + 0.8 * y[:, None] * np.eye(10)[0])
    fit = run_fold(x[:700], y[:700], x[700:])
    balanced = fold_metrics(y[700:], fit.scores)
    plain = LinearSVC(C=fit.c, dual=False).fit(normalize(x[:700]), y[:700]).decision_function(normalize(x[700:]))
    assert fold_metrics(y[700:], plain)["se"] < 0.2 < 0.5 < balanced["se"]  # unweighted: SE near 0


def test_validation_splits_never_share_a_lesion_with_the_fit_part():
    m = lesion_manifest(300)
    labels = (m["diagnosis"] == "melanoma").to_numpy().astype(int)
    splits = validation_splits(labels, m["lesion_id"].to_numpy(), seed=0)
    assert len(splits) == 10
    lesions = m["lesion_id"].to_numpy()
    for fit, val in splits:
        assert not set(lesions[fit]) & set(lesions[val])
        assert 0.05 < len(val) / len(labels) < 0.15 and labels[val].any()
    assert sorted(np.concatenate([val for _, val in splits])) == list(range(len(labels)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's "least populated class" warning
def test_stratified_group_folds_are_scikit_learns():
    rng = np.random.default_rng(0)
    for _ in range(200):  # small and skewed cases make the near-ties the tie-break rule decides
        n = int(rng.integers(20, 300))
        labels = np.where(rng.random(n) < 0.7, 0, rng.integers(0, int(rng.integers(2, 8)), n))
        groups, n_splits, seed = rng.integers(0, n // 2, n), int(rng.integers(2, 11)), int(rng.integers(2**31))
        if n_splits > len(np.unique(groups)) or np.all(n_splits > np.unique(labels, return_counts=True)[1]):
            continue  # scikit-learn refuses these
        expected = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(labels, labels, groups)
        for (_, test), ours in zip(expected, stratified_group_folds(labels, groups, n_splits, seed), strict=True):
            np.testing.assert_array_equal(np.flatnonzero(ours), test)


def test_a_path_started_from_class_sums_is_the_path_built_from_the_rows():
    x, _ = separable(300, d=20, seed=5)
    signs = np.where(np.arange(300) % 4 == 0, 1, -1)  # imbalanced: the two classes weigh differently
    x += 0.3 * signs[:, None] + np.random.default_rng(6).normal(size=x.shape)
    held_out = np.arange(300) < 30  # the sums of a larger set minus a held-out part, as the validation splits do
    sums = tuple(Sums.of(x[signs == s]) - Sums.of(x[held_out & (signs == s)]) for s in (1, -1))
    path = svm_path(x[~held_out], signs[~held_out], C_GRID, sums=sums)
    np.testing.assert_allclose(path, svm_path(x[~held_out], signs[~held_out], C_GRID), atol=1e-9)


def test_ties_go_to_c_nearest_one_then_to_the_smaller():
    assert choose_c(dict.fromkeys(C_GRID, 1.0)) == 1.0  # saturated: the smallest C would put every score below 0
    assert choose_c({0.01: 0.9, 0.1: 0.95, 1.0: 0.9, 10.0: 0.95}) == 0.1
    assert choose_c({0.001: 0.97, 0.01: 0.95, 1.0: 0.9}) == 0.001


def test_a_saturated_validation_auc_keeps_the_test_scores_on_both_sides_of_zero():
    y = np.arange(300) % 2
    x = np.abs(np.random.default_rng(0).normal(size=(300, 20))) + 8 * np.eye(2, 20)[y]  # far apart
    fit = run_fold(x[:200], y[:200], x[200:])
    assert fit.c == 1.0 and set(fit.validation_auc.values()) == {1.0}
    assert fold_metrics(y[200:], fit.scores)["se"] == 1.0 and fold_metrics(y[200:], fit.scores)["sp"] == 1.0


def test_three_class_fold_returns_one_score_column_per_class():
    x, y = separable(300, classes=3)
    fit = run_fold(x[:200], y[:200], x[200:])
    assert fit.scores.shape == (100, 3) and auc(y[200:], fit.scores) > 0.9


def test_a_training_fold_too_small_to_choose_c_is_refused():
    x, y = separable(30)
    y[:] = 0
    y[0] = 1
    with pytest.raises(ProtocolError, match="at least 2 images"):
        run_fold(x, y, x)


# --- statistics ----------------------------------------------------------------------------------------------

def predictions(n: int = 400, folds: int = 2, signal: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Each image tested once per fold, as in 5x2; scores carry `signal` (plus ties, to exercise them)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4 == 0).astype(int)
    parts = [pd.DataFrame({"fold": f"r{f}f0", "image_id": [f"i{i}" for i in range(n)], "label": labels,
                           "score": np.round(signal * labels + rng.normal(size=n), 1)}) for f in range(folds)]
    return pd.concat(parts, ignore_index=True)


def test_bootstrap_interval_brackets_the_mean_fold_auc():
    p = predictions()
    mean_auc = np.mean([roc_auc_score(f["label"], f["score"]) for _, f in p.groupby("fold")])
    ci = stats.bootstrap_auc(p, n_boot=500)
    assert ci.estimate == pytest.approx(mean_auc)
    assert ci.low < mean_auc < ci.high and ci.high - ci.low < 0.2
    assert stats.bootstrap_auc(p, n_boot=500) == ci  # seeded


def test_lesion_bootstrap_is_wider_than_an_image_bootstrap_when_lesions_repeat():
    lesions = predictions(n=300, folds=2, signal=0.8)
    # every lesion photographed three times: three near copies, one independent case
    copies = pd.concat([lesions.assign(lesion_id=lesions["image_id"], image_id=lesions["image_id"] + f"_{k}")
                        for k in range(3)], ignore_index=True)
    by_lesion = stats.bootstrap_auc(copies, n_boot=400)
    by_image = stats.bootstrap_auc(copies.drop(columns="lesion_id"), n_boot=400)
    assert by_lesion.estimate == by_image.estimate
    assert (by_lesion.high - by_lesion.low) > 1.4 * (by_image.high - by_image.low)  # about sqrt(3) wider


def holm_values(p_values: list[float]) -> list[float]:
    return [p.value for p in stats.holm([stats.PValue(p) for p in p_values])]


def test_holm_adjusts_known_p_values():
    assert holm_values([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_values([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert holm_values([0.9, 0.5]) == pytest.approx([1.0, 1.0])
    assert holm_values([0.01, float("nan"), 0.04]) == pytest.approx([0.02, float("nan"), 0.04], nan_ok=True)


def test_holm_keeps_a_bootstrap_bound_a_bound():
    bound, exact = stats.PValue(0.002, bound=True), stats.PValue(0.03)
    assert [str(p) for p in stats.holm([exact, bound, stats.PValue(0.001)])] == ["0.030", "< 0.004", "0.003"]
    # the exact 0.002 sets the adjusted value of both: max(0.002, "< 0.002") is 0.002
    assert [str(p) for p in stats.holm([stats.PValue(0.001), bound])] == ["0.002", "0.002"]
    assert str(stats.holm([stats.PValue(0.3, bound=True)] * 4)[0]) == "1.000"


def test_p_values_print_no_finer_than_their_draws():
    none_crossed = stats.Comparison(stats.Interval(0.1, 0.05, 0.15), p_value=0.0, folds=10, n_boot=1000)
    assert str(none_crossed.bootstrap_p) == "< 0.002"
    assert str(stats.Comparison(none_crossed.difference, 0.0, 10, n_boot=10_000).bootstrap_p) == "< 0.0002"
    assert str(stats.Comparison(none_crossed.difference, 0.004, 10, n_boot=1000).bootstrap_p) == "0.004"
    assert [stats.format_p(stats.PValue(v)) for v in (0.0412, 3.2e-5, float("nan"))] == ["0.041", "3.2e-05", "–"]


def test_five_by_two_f_test_as_alpaydin_defines_it():
    d = {f"r{r}f{f}": v for (r, f), v in zip([(r, f) for r in range(5) for f in range(2)],
                                                [0.02, 0.04, 0.01, 0.03, 0.05, 0.01, 0.02, 0.02, 0.03, 0.01])}
    pairs = np.array(list(d.values())).reshape(5, 2)
    s2 = ((pairs - pairs.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    expected = (pairs**2).sum() / (2 * s2.sum())
    statistic, p = stats.f_test_5x2(d)
    assert statistic == pytest.approx(expected) and p == pytest.approx(scipy_f.sf(expected, 10, 5))
    assert np.isnan(stats.f_test_5x2({k: v for k, v in d.items() if k != "r4f1"})[0])
    assert stats.f_test_5x2(dict.fromkeys(d, 0.0)) == (0.0, 1.0)  # identical configurations


def test_corrected_resampled_t_test_by_hand():
    d, ratio = [0.02, 0.01, 0.03, 0.0], 0.25
    mean, var = 0.015, (2 * 0.005**2 + 2 * 0.015**2) / 3
    expected = mean / np.sqrt((1 / 4 + ratio) * var)  # Nadeau and Bengio: 1/J + n_test/n_train
    statistic, p = stats.corrected_t_test(d, ratio)
    assert statistic == pytest.approx(expected) and p == pytest.approx(2 * scipy_t.sf(expected, 3))
    plain = ttest_1samp(d, 0.0)  # without the correction it is the one-sample t-test
    assert stats.corrected_t_test(d, 0.0) == pytest.approx((plain.statistic, plain.pvalue))
    assert stats.corrected_t_test([0.0] * 4, ratio) == (0.0, 1.0)
    assert np.isnan(stats.corrected_t_test([0.02], ratio)[1])


def partition_predictions(signal: float, folds: int, seed: int, n: int = 400, repeats: int = 1) -> pd.DataFrame:
    """`repeats` random partitions of n images into `folds` test parts, as k-fold cross-validation makes them."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4 == 0).astype(int)
    scores = signal * labels + rng.normal(size=n)
    parts = []
    for r in range(repeats):
        for f, test in enumerate(np.array_split(np.random.default_rng(r).permutation(n), folds)):
            noisy = scores[test] + 0.3 * rng.normal(size=len(test))  # each fold's own training run
            parts.append(pd.DataFrame({"fold": f"r{r}f{f}", "image_id": [f"i{i}" for i in test],
                                       "label": labels[test], "score": noisy}))
    return pd.concat(parts, ignore_index=True)


def test_paired_comparison_uses_the_corrected_t_test_off_5x2_and_the_f_test_on_it():
    strong, weak = partition_predictions(2.0, 5, seed=0), partition_predictions(0.2, 5, seed=1)
    same = stats.paired_comparison(strong, strong, n_boot=200)
    assert same.test == "corrected t" and same.test_p_value == 1 and same.verdict_p.value == 1
    better = stats.paired_comparison(strong, weak, n_boot=200)
    per_fold = [roc_auc_score(a["label"], a["score"]) - roc_auc_score(b["label"], b["score"])
                for (_, a), (_, b) in zip(strong.groupby("fold"), weak.groupby("fold"))]
    assert (better.test, better.folds) == ("corrected t", 5)
    assert (better.statistic, better.test_p_value) == pytest.approx(stats.corrected_t_test(per_fold, 80 / 320))
    assert better.test_p_value < 0.01 and better.verdict_p.value == max(better.test_p_value, 2 / 200)
    five_by_two = stats.paired_comparison(partition_predictions(2.0, 2, 0, repeats=5),
                                          partition_predictions(0.2, 2, 1, repeats=5), n_boot=200)
    assert five_by_two.test == "5x2cv F" and five_by_two.verdict_p.value < 0.05
    one_fold = stats.paired_comparison(strong.query("fold == 'r0f0'"), weak.query("fold == 'r0f0'"), n_boot=200)
    assert one_fold.test == "" and np.isnan(one_fold.verdict_p.value)  # one fold cannot show training variance


def test_weighted_auc_agrees_with_scikit_learn():
    rng = np.random.default_rng(3)
    score, truth = np.round(rng.normal(size=300), 1), rng.random(300) < 0.3  # rounded: ties
    weights = rng.integers(0, 4, size=(5, 300)).astype(np.int32)
    expected = [roc_auc_score(truth, score, sample_weight=w) for w in weights]
    assert stats._weighted_auc(score, truth, weights) == pytest.approx(expected)


def test_bootstrap_of_three_class_predictions_uses_the_ovo_auc():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], [60, 30, 30])
    scores = rng.normal(size=(120, 3)) + np.eye(3)[labels]
    p = pd.DataFrame({"fold": "official", "image_id": np.arange(120), "label": labels, "score": scores[:, 1]})
    p[["score_benign", "score_melanoma", "score_carcinoma"]] = scores
    assert stats.bootstrap_auc(p, n_boot=200).estimate == pytest.approx(auc(labels, scores))


def test_paired_comparison_finds_the_better_backbone_and_no_difference_with_itself():
    strong, weak = predictions(signal=1.5), predictions(signal=0.3, seed=1)
    same = stats.paired_comparison(strong, strong, n_boot=300)
    assert same.difference.estimate == 0 and same.p_value == 1
    better = stats.paired_comparison(strong, weak, n_boot=300)
    assert better.difference.low > 0 and better.p_value < 0.01 and better.folds == 2
    with pytest.raises(ProtocolError, match="same"):
        stats.paired_comparison(strong, strong.iloc[:-1], n_boot=10)


def test_auc_by_difficulty_separates_easy_from_hard_images():
    p = predictions(n=400, folds=2, signal=0.0)
    easy = p["image_id"].str[1:].astype(int) < 200
    p.loc[easy, "score"] = p.loc[easy, "label"] + 0.01 * np.arange(easy.sum()) % 1  # perfectly ranked
    difficulty = pd.Series(np.where(np.arange(400) < 200, "low", "high"), index=[f"i{i}" for i in range(400)])
    table = stats.auc_by_difficulty(p, difficulty)
    assert table["difficulty"].tolist() == ["low", "high"]  # the Atlas' order, not alphabetical
    table = table.set_index("difficulty")
    assert table.loc["low", "auc"] == 1.0 and abs(table.loc["high", "auc"] - 0.5) < 0.15
    assert table.loc["low", "images"] == 200 and table.loc["low", "folds"] == 2


def test_referral_sensitivity_against_fraction_referred():
    # 10 cases, 2 melanomas ranked 1st and 4th by score: referring 10% catches one, 40% catches both
    p = pd.DataFrame({"fold": "official", "image_id": range(10), "label": [1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                      "score": np.linspace(1, -1, 10)})
    table = stats.referral(p, fractions=(0.1, 0.4), targets=(1.0,))
    assert table["sensitivity"].tolist() == [0.5, 1.0, 1.0]
    assert table["referred"].tolist() == [0.1, 0.4, 0.4] and table["target"].tolist() == [False, False, True]


def test_a_single_fold_shows_no_spread():
    assert stats.format_mean_sd(*stats.mean_sd([0.848])) == "84.8"
    assert stats.format_mean_sd(*stats.mean_sd([0.84, 0.86])) == "85.0 ± 1.4"
    assert stats.format_mean_sd(float("nan"), float("nan")) == "–"
