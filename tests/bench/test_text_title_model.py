"""The title model of lever 12 (bench/bench_text_title_model.py): learned from which description words reach titles."""

import math
import random

import pytest

from bench.bench_text_title_model import PRIOR_WEIGHT, TitleModel


@pytest.fixture(scope="module")
def corpus():
    """300 products: each description names a brand and an object (which the title repeats) among filler words
    (which it never does); a few titles add a word their description lacks."""
    rng = random.Random(0)
    brands = [f"brand{i}" for i in range(30)]
    objects = ["sofa", "chair", "table", "lamp", "desk", "bed"]
    filler = ["collection", "condition", "please", "only", "good", "pick", "up", "from", "cash", "smoke"]
    descriptions, titles = {}, {}
    for n in range(300):
        brand, thing = rng.choice(brands), rng.choice(objects)
        words = rng.sample(filler, 6)
        words.insert(rng.randrange(4), brand)
        words.insert(rng.randrange(6), thing)
        descriptions[f"p{n}"] = words
        titles[f"p{n}"] = {brand, thing} | ({"vintage"} if n % 10 == 0 else set())
    return descriptions, titles


@pytest.mark.parametrize("classifier", ["lightgbm", "logistic"])
def test_title_words_are_likely_and_filler_is_not(corpus, classifier):
    descriptions, titles = corpus
    model = TitleModel(descriptions, titles, train_ids=[f"p{n}" for n in range(250)], classifier=classifier)
    p = model.probabilities(descriptions["p260"])
    named = titles["p260"] - {"vintage"}
    assert min(p[t] for t in named) > 0.5
    assert max(v for t, v in p.items() if t not in named) < 0.2


def test_the_own_title_is_left_out_of_the_prior(corpus):
    descriptions, titles = corpus
    descriptions = {**descriptions, "p0": descriptions["p0"] + ["unique"]}
    titles = {**titles, "p0": titles["p0"] | {"unique"}}
    model = TitleModel(descriptions, titles, train_ids=[f"p{n}" for n in range(250)])
    own = dict(zip(*model.term_features(descriptions["p0"], own_title=titles["p0"])))
    other = dict(zip(*model.term_features(descriptions["p0"])))
    prior = 4  # column of the title prior
    # seen once, in p0's own title: left out, only the smoothing's base rate remains
    assert own["unique"][prior] == pytest.approx(model.base_rate)
    assert other["unique"][prior] == pytest.approx((1 + PRIOR_WEIGHT * model.base_rate) / (1 + PRIOR_WEIGHT))


def test_the_likelihood_prefers_the_description_whose_likely_title_the_query_is(corpus):
    descriptions, titles = corpus
    model = TitleModel(descriptions, titles, train_ids=[f"p{n}" for n in range(250)])
    query = titles["p260"]
    others = [i for i in list(descriptions)[250:] if not titles[i] & query]
    own, matched, left_out = model.likelihood(query, model.probabilities(descriptions["p260"]))
    assert own == pytest.approx(matched + left_out + sum(
        math.log(model.title_only_rate(t)) for t in query if t not in descriptions["p260"]))
    assert all(own > model.likelihood(query, model.probabilities(descriptions[i]))[0] for i in others)


def test_an_unknown_classifier_is_refused(corpus):
    with pytest.raises(ValueError, match="lightgbm or logistic"):
        TitleModel(*corpus, train_ids=["p0"], classifier="svm")
