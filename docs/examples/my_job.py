"""A complete losscli job: two interleaved spirals, classified by a small MLP.

    losscli train --plugin my_job.py --task my_job --loss ce --loss focal:gamma=2
"""
import torch
import torch.nn.functional as F
from torch import nn

from losscli.jobs import Job, JobData, Option, Split, TaskFile, register_job
from losscli.losses import Family, Pred, Target
from losscli.settings import Settings


def spirals(n: int, noise: float, gen: torch.Generator) -> Split:
    label = torch.randint(0, 2, (n,), generator=gen)
    turns = 0.25 + 1.5 * torch.rand(n, generator=gen) ** 0.5
    angle = 2 * torch.pi * turns + torch.pi * label  # the second arm: half a turn on
    points = torch.stack([angle.cos(), angle.sin()], 1) * turns[:, None]
    return Split(points + noise * torch.randn(n, 2, generator=gen), label)


@register_job
class SpiralsJob(Job):
    name = "my_job"
    description = "Two interleaved spirals (generated), 2 classes"
    model_name = "MLP 2-64-64-2"
    metrics, primary_metric = ("accuracy", "nll"), "accuracy"
    lower_is_better = frozenset({"nll"})
    families = frozenset({Family.CLASSIFICATION})
    preds, targets = frozenset({Pred.LOGITS, Pred.LOG_PROBS}), frozenset({Target.INDEX})
    option_specs = (Option("noise", float, 0.1, "std of the point noise", low=0),
                    Option("n_train", int, 2000, "training points", low=64))

    def load_task(self) -> TaskFile:  # the budget, default losses, target of the metric
        budget = Settings(steps=500, batch_size=64, lr=1e-2, optimizer="adam", eval_every=100)
        return TaskFile(budget, losses=("ce", "focal:gamma=2"), target=0.95)

    def load_data(self) -> JobData:  # train / validation / test, fixed by the data seed
        gen, noise = torch.Generator().manual_seed(0), self.option("noise")
        return JobData(spirals(self.option("n_train"), noise, gen), spirals(500, noise, gen),
                       spirals(1000, noise, gen), "generated spirals, data seed 0")

    def build_model(self, data: JobData) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 2))

    def adapt_pred(self, output, kind):  # the model's output in the kind a loss takes
        return F.log_softmax(output, 1) if kind is Pred.LOG_PROBS else output

    def adapt_target(self, target, kind, output):
        return target

    @torch.no_grad()
    def evaluate(self, model, split, objective) -> dict[str, float]:
        logits = model(split.x)
        accuracy = (logits.argmax(1) == split.y).float().mean()
        values = torch.stack([accuracy, F.cross_entropy(logits, split.y)])
        return dict(zip(self.metrics, values.tolist(), strict=True))  # one host sync

    def probe(self):  # a tiny (output, target) pair: losses are checked on it before training
        return torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
