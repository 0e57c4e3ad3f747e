"""A reward function of your own: ``lmpo train configs/prompts-example.yaml`` names it as
``examples/my_reward.py:helpful``.

A reward is a plain function ``(prompts, completions, **fields) -> list[float]``: one score per completion, where
``fields`` are the prompt rows' other columns (here ``topic``), aligned with ``completions``.
"""


def helpful(prompts: list[str], completions: list[str], topic: list[str], **fields: object) -> list[float]:
    """1.0 for a reply that offers help, 0.5 more when it names the request's topic; 0 for a refusal or a question
    back; minus 0.05 for every word past 12.

    >>> helpful(["Can you book a taxi?"] * 3, ["Sure, I can book a taxi.", "Sure, happy to help.", "Sorry, no."],
    ...         topic=["taxi"] * 3)
    [1.5, 1.0, 0.0]
    """
    scores = []
    for reply, subject in zip(completions, topic):
        words = reply.lower().replace(",", " ").replace(".", " ").split()
        score = 0.0
        if words[:1] == ["sure"]:
            score = 1.5 if subject.lower() in words else 1.0
        scores.append(score - 0.05 * max(0, len(words) - 12))
    return scores
