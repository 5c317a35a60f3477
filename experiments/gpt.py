"""A character-level GPT on English prose that ships with Python: embeddings, causal multi-head attention, GELU,
LayerNorm and cross-entropy, every parameterised layer hand-derived, trained with AdamW in lockstep."""

from __future__ import annotations

import pydoc_data.topics
from collections.abc import Callable

import torch

from experiments.lab.minibatches import Minibatches
from experiments.lab.registry import Config, OptimizerChoice, Setup, experiment
from torchbp.lockstep import LockstepTrainer, StepRecord

CONTEXT = 32  # characters a prediction sees
TEXT_CHARACTERS = 120_000  # of pydoc's topic texts (about 465 000 in all): the first ones, in a fixed order
HELD_OUT = 0.1  # the text's last tenth
PROMPT = "The "


def prose() -> str:
    """English prose on every machine without a download: the help texts of Python's pydoc, in topic order."""
    topics = pydoc_data.topics.topics
    return "".join(topics[name] for name in sorted(topics))[:TEXT_CHARACTERS]


def encoded_prose() -> tuple[str, torch.Tensor]:
    """The prose's alphabet (its characters, sorted) and the prose as indices into it."""
    text = prose()
    alphabet = "".join(sorted(set(text)))
    index = {character: i for i, character in enumerate(alphabet)}
    return alphabet, torch.tensor([index[character] for character in text])


class Block(torch.nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)), the MLP
    width → 4 width → width with GELU."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )
        self.register_buffer("causal", torch.triu(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool), 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        mask = self.causal[: x.shape[1], : x.shape[1]]
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.norm2(x))


class GPT(torch.nn.Module):
    """Token and position embeddings, ``blocks`` blocks, a final LayerNorm and a linear head: logits (N, V, T)
    for characters (N, T), the layout cross-entropy takes with a target (N, T)."""

    def __init__(self, vocabulary: int, width: int = 64, heads: int = 4, blocks: int = 2):
        super().__init__()
        self.token, self.position = torch.nn.Embedding(vocabulary, width), torch.nn.Embedding(CONTEXT, width)
        self.blocks = torch.nn.Sequential(*(Block(width, heads) for _ in range(blocks)))
        self.norm, self.head = torch.nn.LayerNorm(width), torch.nn.Linear(width, vocabulary)
        self.register_buffer("positions", torch.arange(CONTEXT), persistent=False)

    def forward(self, characters: torch.Tensor) -> torch.Tensor:
        # Each sample looks its positions up itself, (N, T), so that per-sample gradients see each one's δ.
        positions = self.positions[: characters.shape[1]].expand(characters.shape)
        x = self.token(characters) + self.position(positions)
        return self.head(self.norm(self.blocks(x))).transpose(1, 2)


def windows(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of CONTEXT + 1 characters: inputs (W, CONTEXT) and the next characters."""
    count = (len(codes) - 1) // CONTEXT
    chunks = codes[: count * CONTEXT + 1]
    return chunks[:-1].view(count, CONTEXT), chunks[1:].view(count, CONTEXT)


def bigram_loss(train: torch.Tensor, held_out: torch.Tensor, vocabulary: int) -> float:
    """Held-out cross-entropy (nats per character) of the training text's bigram counts, add-one smoothed."""
    counts = torch.ones(vocabulary, vocabulary, dtype=torch.float64)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64), accumulate=True)
    log_p = (counts / counts.sum(1, keepdim=True)).log()
    return -log_p[held_out[:-1], held_out[1:]].mean().item()


def held_out_loss(x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.nn.Module], float]:
    def metric(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y).item()

    return metric


def sample(model: torch.nn.Module, alphabet: str, length: int = 160, seed: int = 0) -> str:
    """``length`` characters the model writes after PROMPT, each drawn from its predicted distribution."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    codes = torch.tensor([[alphabet.index(c) for c in PROMPT]], device=device)
    with torch.no_grad():
        for _ in range(length):
            p = model(codes[:, -CONTEXT:])[0, :, -1].softmax(0).cpu()
            codes = torch.cat([codes, torch.multinomial(p, 1, generator=generator).to(device)[None]], 1)
    return "".join(alphabet[i] for i in codes[0].tolist())


class Samples:
    """A text card of what the torchbp model writes, every ``every`` steps and at the end."""

    def __init__(self, alphabet: str, every: int):
        self.alphabet, self.every = alphabet, every

    def card(self, trainer: LockstepTrainer, step: int) -> None:
        if trainer.log is not None:
            text = sample(trainer.hand_model, self.alphabet).replace("\n", " ")
            trainer.log.text("sample", f"step {step}: `{text}`", step)

    def watch(self, trainer: LockstepTrainer) -> Callable[[StepRecord], None]:
        def after(record: StepRecord) -> None:
            if record.step % self.every == 0:
                self.card(trainer, record.step)

        return after

    def finish(self, trainer: LockstepTrainer) -> None:
        self.card(trainer, trainer.result.steps)


@experiment(
    "gpt",
    "a character-level GPT (2 pre-LayerNorm blocks, 4 heads, width 64) on pydoc's English help texts; "
    "held-out loss against the text's bigram model",
    optimizer=OptimizerChoice(torch.optim.AdamW),
    steps=300,
    lr=3e-3,
    batch_size=32,
    dtype="float32",
)
def build(config: Config) -> Setup:
    alphabet, codes = encoded_prose()
    cut = int(len(codes) * (1 - HELD_OUT))
    x_train, y_train = windows(codes[:cut])
    x_test, y_test = windows(codes[cut:])
    torch.manual_seed(config.seed)
    model = GPT(len(alphabet)).to(dtype=config.torch_dtype, device=config.device)
    samples = Samples(alphabet, every=max(config.steps // 3, 1))
    device = config.device
    bigram = bigram_loss(codes[:cut], codes[cut:], len(alphabet))  # the baseline, the same for both models
    return Setup(
        model=model,
        loss_fn=torch.nn.CrossEntropyLoss(),
        batches=Minibatches(x_train.to(device), y_train.to(device), config.batch_size, config.seed),
        metrics={
            "held_out_loss": held_out_loss(x_test.to(device), y_test.to(device)),
            "bigram_held_out_loss": lambda model: bigram,
        },
        headline_metric="held_out_loss",
        baseline_metric="bigram_held_out_loss",
        metric_every=100,
        per_sample_every=100,
        watch=samples.watch,
        finish=samples.finish,
    )
