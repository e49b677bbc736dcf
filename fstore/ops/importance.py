"""Feature importance for a saved training set's label: mutual information, and a quick GBT model on Spark.

Mutual information (``mutual_information``, in nats) is computed with numpy on the saved rows: a numeric
feature is cut into 20 quantile bins, a string is its own categories, a null is one more bin; a label with
more than 20 distinct numeric values is binned the same way. It sees any dependence (not only linear), needs
no model, and ranks features identically on either engine. On Spark, ``gbt`` adds MLlib's gradient-boosted
trees' ``featureImportances`` (a classifier for a label of two values, else a regressor; 20 trees of depth
4), which credits features by how much they help a model given the others.

Scores are stored with the training set (``feature_importances``; ``GET /api/v1/training-sets/NAME`` lists
them), replacing an earlier computation of the same label and method. Scores from an external experiment
tracker are logged the same way (``POST /api/v1/training-sets/NAME/importance``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fstore.core.errors import InvalidDefinition
from fstore.registry import quality as records
from fstore.registry.training_sets import get_training_set

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

BINS = 20


def _codes(values: Any) -> np.ndarray:
    """Integer codes: quantile bins for numbers (nulls one more code), categories for anything else."""
    import pandas as pd

    series = pd.Series(values)
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return pd.factorize(series.astype("string").fillna("\0null"))[0]
    x = series.to_numpy(dtype=float)
    finite = np.isfinite(x)
    if len(np.unique(x[finite])) <= BINS:
        codes = pd.factorize(pd.Series(np.where(finite, x, np.nan)))[0]
        return np.where(codes < 0, codes.max(initial=0) + 1, codes)
    edges = np.unique(np.quantile(x[finite], np.linspace(0, 1, BINS + 1)[1:-1]))
    return np.where(finite, np.searchsorted(edges, np.where(finite, x, 0.0), side="right"), len(edges) + 1)


def mutual_information(feature: Any, label: Any) -> float:
    """I(feature; label) in nats, on binned values (see the module)."""
    a, b = _codes(feature), _codes(label)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def _frame(store: "StoreContext", saved: dict[str, Any]):
    import pyarrow.parquet as pq

    from fstore.storage.offline import filesystem

    fs, path_of = filesystem(store.settings)
    return pq.read_table(path_of(saved["data_path"]), filesystem=fs).to_pandas()


def analyze(store: "StoreContext", training_set: str, label: str, *, methods: tuple[str, ...] = ("mutual_information",),
            actor: str = "") -> dict[str, Any]:
    """Compute and store the importance of each feature of ``training_set`` for column ``label``."""
    with store.transaction() as s:
        saved = get_training_set(s, training_set)
    frame = _frame(store, saved)
    if label not in frame.columns:
        raise InvalidDefinition(f"training set {saved['name']} has no column {label!r} to use as the label; its columns "
                                f"are: {', '.join(map(str, frame.columns))}", field="label")
    outputs = {str(c) for g in saved.get("groups", []) for c in _outputs(g)}
    features = [c for c in frame.columns if c in outputs and c != label]
    if not features:
        raise InvalidDefinition(f"training set {saved['name']} has no feature column besides {label!r}", field="label")
    if frame[label].isna().all():
        raise InvalidDefinition(f"label column {label!r} of training set {saved['name']} is all null", field="label")
    rows = frame[frame[label].notna()]
    results: dict[str, dict[str, float]] = {}
    for method in methods:
        if method == "mutual_information":
            results[method] = {f: round(mutual_information(rows[f], rows[label]), 6) for f in features}
        elif method == "gbt":
            results[method] = _gbt(store, rows, features, label)
        else:
            raise InvalidDefinition(f"importance method {method!r} is not one of: mutual_information, gbt", field="method")
    with store.transaction() as s:
        for method, scores in results.items():
            records.save_importances(s, saved["name"], label, method, scores, actor=actor)
    return {"training_set": saved["name"], "label": label, "rows": int(len(rows)),
            "methods": {m: sorted(({"feature": f, "score": v} for f, v in sc.items()), key=lambda x: -x["score"])
                        for m, sc in results.items()}}


def _outputs(group: dict[str, Any]) -> list[str]:
    """The column names a saved group's features were answered under (``set@v:feature`` → ``set__feature``,
    as ``fstore.serving.retrieval.plan.output_name`` names them)."""
    return [f"{o.split(':', 1)[0].split('@', 1)[0]}__{o.split(':', 1)[1]}" if ":" in o else o
            for o in group.get("output_names", [])]


def _gbt(store: "StoreContext", rows, features: list[str], label: str) -> dict[str, float]:
    """MLlib GBT ``featureImportances`` (Spark engine only), one score per feature (a string's indexed column)."""
    if store.settings.compute_engine != "spark":
        raise InvalidDefinition("method gbt runs on Spark MLlib; use COMPUTE_ENGINE=spark or mutual_information",
                                field="method")
    import pandas as pd
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import GBTClassifier
    from pyspark.ml.feature import StringIndexer, VectorAssembler
    from pyspark.ml.regression import GBTRegressor

    data = pd.DataFrame({"__label": rows[label].to_numpy()})
    stages = []
    for i, f in enumerate(features):
        column = rows[f]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            data[f"__f{i}"] = column.astype(float).to_numpy()
        else:  # a category: indexed by MLlib into __f<i>
            data[f"__s{i}"] = column.astype("string").fillna("\0null").astype(object).to_numpy()
            stages.append(StringIndexer(inputCol=f"__s{i}", outputCol=f"__f{i}", handleInvalid="keep"))
    inputs = [f"__f{i}" for i in range(len(features))]
    classes = data["__label"].nunique()
    if classes == 2:
        data["__label"] = pd.factorize(data["__label"])[0].astype(float)
        model = GBTClassifier(featuresCol="__v", labelCol="__label", maxIter=20, maxDepth=4, seed=7)
    else:
        data["__label"] = data["__label"].astype(float)
        model = GBTRegressor(featuresCol="__v", labelCol="__label", maxIter=20, maxDepth=4, seed=7)
    stages += [VectorAssembler(inputCols=inputs, outputCol="__v", handleInvalid="keep"), model]
    fitted = Pipeline(stages=stages).fit(store.spark.createDataFrame(data))
    scores = fitted.stages[-1].featureImportances.toArray()
    return {f: round(float(scores[i]), 6) for i, f in enumerate(features)}
