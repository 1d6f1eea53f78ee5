"""Pooling an image's tiles: attention weights, one prediction per image whatever the chunking, what attention
learns, and the feature cache of evaluation grids."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchvision.transforms import ToTensor

from histofuse.tile_pooling import AttentionPooling, pool_tile_logits, tile_owners


def test_attention_weights_sum_to_one_per_image_and_an_image_is_their_weighted_sum():
    torch.manual_seed(0)
    pool = AttentionPooling(6, hidden=4)
    features, counts = torch.randn(9, 6), torch.tensor([2, 4, 3])
    weights = pool.weights(features, counts)
    owners = tile_owners(counts, "cpu")
    assert torch.allclose(torch.zeros(3).index_add(0, owners, weights), torch.ones(3))
    pooled = pool(features, counts)
    for image, (start, count) in enumerate(zip([0, 2, 6], counts.tolist())):
        tiles = features[start : start + count]
        assert torch.allclose(pool(tiles), pooled[image : image + 1], atol=1e-6)
        expected = (torch.softmax(pool.scores(tiles), 0)[:, None] * tiles).sum(0)
        assert torch.allclose(pooled[image], expected, atol=1e-6)
    # Large scores must not overflow: each image's softmax is shifted by its own largest score.
    assert torch.isfinite(pool(features * 1e4, counts)).all()


@pytest.fixture
def attention_model(tiny_recipe_dict, registry):
    from histofuse.model import build_model
    from histofuse.recipe import parse_recipe

    raw = copy.deepcopy(tiny_recipe_dict)
    raw["data"]["tiles"] = {"pooling": "attention", "min_tissue": 0.3}
    torch.manual_seed(0)
    return build_model(parse_recipe(raw), registry, 2, pretrained=False).eval()


def test_a_model_with_attention_pooling_gives_one_row_per_image_however_its_tiles_are_chunked(attention_model, monkeypatch):
    import histofuse.model

    tiles, counts = torch.rand(7, 3, 32, 32), torch.tensor([3, 1, 3])
    with torch.no_grad():
        together = attention_model(tiles, counts=counts)
        monkeypatch.setattr(histofuse.model, "TILE_CHUNK", 2)
        chunked = attention_model(tiles, counts=counts)
        alone = torch.cat([attention_model.one_image(tiles[s : s + c]) for s, c in [(0, 3), (3, 1), (4, 3)]])
        shuffled = attention_model(tiles[[2, 0, 1, 3, 6, 4, 5]], counts=counts)
    assert together.shape == (3, 2)
    assert torch.allclose(together, chunked, atol=1e-5) and torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, shuffled, atol=1e-5)  # a bag has no order
    assert any(p is q for p in attention_model.tile_pooling.parameters() for q in attention_model.head_parameters())


def test_attention_pooling_learns_which_tile_decides_where_the_mean_dilutes_it():
    """Bags of 12 tiles; a positive bag holds one tile with a marker. A tile classifier pooled by its mean
    probability ranks bags worse than attention pooling, whose weight falls on the marked tile."""
    rng = torch.Generator().manual_seed(0)

    def bags(n: int):
        features = torch.randn(n * 12, 8, generator=rng)
        labels = torch.arange(n) % 2
        marked = torch.arange(n) * 12 + torch.randint(0, 12, (n,), generator=rng)
        features[marked[labels == 1], 0] += 5.0
        return features, labels, torch.full((n,), 12), marked

    torch.manual_seed(0)
    pool, head, tile_head = AttentionPooling(8, hidden=16), torch.nn.Linear(8, 2), torch.nn.Linear(8, 2)
    optimizer = torch.optim.Adam([*pool.parameters(), *head.parameters(), *tile_head.parameters()], lr=1e-2)
    for _ in range(300):
        features, labels, counts, _ = bags(32)
        tile_labels = labels.repeat_interleave(counts)  # the mean's training: every tile carries its image's label
        loss = torch.nn.functional.cross_entropy(head(pool(features, counts)), labels)
        loss = loss + torch.nn.functional.cross_entropy(tile_head(features), tile_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, labels, counts, marked = bags(400)
    with torch.no_grad():
        attention = head(pool(features, counts)).softmax(1)[:, 1]
        mean = pool_tile_logits(tile_head(features), counts).softmax(1)[:, 1]
        weights = pool.weights(features, counts)
    attention_auc, mean_auc = roc_auc_score(labels, attention), roc_auc_score(labels, mean)
    assert attention_auc > 0.98 and attention_auc > mean_auc + 0.1, (attention_auc, mean_auc)
    assert weights[marked[labels == 1]].mean() > 0.8  # of 12 tiles, the marked one holds most of the weight


@pytest.fixture
def grid_table(tiny_recipe_dict, synthetic_root):
    """The tiny synthetic tree as evaluation grids of 24-pixel tiles."""
    from histofuse.data.loading import ImageTable
    from histofuse.data.tiles import table_options
    from histofuse.recipe import DataConfig, TilesConfig
    from histofuse.registry import default_registry

    spec = default_registry().get("dataset", "synthetic")
    table = spec.scan(synthetic_root, **tiny_recipe_dict["data"]["options"]).head(10)
    data = DataConfig(dataset="synthetic", image_size=32, tiles=TilesConfig(size=24, stride=24, min_tissue=0.3))
    return ImageTable(table, ["benign", "malignant"], ToTensor(), **table_options(data, table, False, "data"))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_cached_grid_features_predict_what_the_tiles_predict(attention_model, grid_table, pooling):
    from histofuse.data.loading import make_loader
    from histofuse.training.feature_cache import FeatureBank, FeatureStore
    from histofuse.training.predict import pooled_tile_logits

    model = attention_model
    if pooling == "mean":
        model.tile_pooling = None
    bank = FeatureBank.compute(model, grid_table, 4, 0, "cpu")
    assert bank.counts is not None and int(bank.counts.sum()) == len(bank.features[0]) and int(bank.counts.max()) > 1
    with torch.no_grad():
        direct = torch.cat([pooled_tile_logits(model, b["image"], b["tile_counts"])
                            for b in make_loader(grid_table, 4, train=False)])
    cached = bank.predict(model, 2, contextlib.nullcontext)
    assert np.allclose(cached.logits, direct.numpy(), atol=1e-5)

    store = FeatureStore()
    first = store.bank(model, grid_table, 4, 0, "cpu")
    again = store.bank(model, grid_table, 4, 0, "cpu")  # the next fold: nothing computed twice
    assert store.computed == len(grid_table)
    assert torch.equal(first.counts, bank.counts) and torch.equal(again.features[0], bank.features[0])


def test_training_draws_tiles_of_each_image_s_own_grid_reproducibly(attention_model, grid_table):
    from histofuse.training.feature_cache import FeatureBank

    bank = FeatureBank.compute(attention_model, grid_table, 4, 0, "cpu")
    positions = [0, 3, 5]
    features, labels, _, counts = bank.batch(positions, 2, torch.Generator().manual_seed(1))
    assert counts.tolist() == [min(2, int(bank.counts[p])) for p in positions]
    for p, drawn in zip(positions, features[0].split(counts.tolist())):  # each image's tiles come from its own grid
        own = bank.features[0][bank.rows(p)]
        assert all((own == row).all(1).any() for row in drawn)
    again, _, _, _ = bank.batch(positions, 2, torch.Generator().manual_seed(1))
    assert torch.equal(features[0], again[0])
    one, _, _, no_counts = bank.batch(positions, 1, torch.Generator().manual_seed(1))
    assert no_counts is None and len(one[0]) == 3  # one tile per image: each row is its image, as without a cache
    assert labels.tolist() == [grid_table.labels[p] for p in positions]


def test_each_epoch_draws_its_own_tiles_and_a_resumed_epoch_the_same(attention_model, grid_table):
    from histofuse.data.sampling import EpochSampler
    from histofuse.training.feature_cache import FeatureBank

    bank = FeatureBank.compute(attention_model, grid_table, 4, 0, "cpu")

    def epoch(number: int) -> list[torch.Tensor]:
        sampler = EpochSampler(bank.labels.tolist(), balanced=False, seed=3)
        sampler.set_epoch(number)
        return [features[0] for features, *_ in bank.batches(sampler, 4, draw=2)]

    first, again, second = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))


def test_attention_pooling_under_autocast_gives_float32_image_features():
    pool = AttentionPooling(8, hidden=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pool(torch.randn(5, 8).to(torch.bfloat16), torch.tensor([2, 3]))
    assert pooled.dtype == torch.float32 and torch.isfinite(pooled).all()


def test_a_fold_ensemble_pools_one_image_as_its_members_do(attention_model):
    from histofuse.crossval.ensemble import EnsembleModule

    other = copy.deepcopy(attention_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ensemble = EnsembleModule([attention_model, other], [1.0, 2.0]).eval()
    tiles = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([attention_model.one_image(tiles).softmax(1), (other.one_image(tiles) / 2).softmax(1)])
        assert ensemble.pools_tiles
        assert torch.allclose(ensemble.one_image(tiles), expected.mean(0).log(), atol=1e-6)
        assert torch.allclose(ensemble(tiles, counts=torch.tensor([5])), ensemble.one_image(tiles), atol=1e-5)
