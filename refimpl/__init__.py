"""refimpl: plain-PyTorch reference implementations of the estimators and losses of RL for LLM
post-training, one concept per module, each with its equation and source in the docstring.

Every function of the canonical contract (docs/contract.md) is exported here:

    from refimpl import gae, group_normalized_advantages, ppo_clip_loss, dpo_loss

| module           | functions                                                      |
|------------------|----------------------------------------------------------------|
| returns          | discounted_returns, gae                                        |
| group            | group_normalized_advantages, leave_one_out_advantages          |
| whitening        | batch_normalized_advantages                                    |
| kl               | kl_estimate, kl_penalized_rewards                              |
| aggregation      | aggregate                                                      |
| policy_loss      | policy_gradient_loss, ppo_clip_loss                            |
| value_loss       | value_loss                                                     |
| preferences      | bradley_terry_loss, dpo_loss, ipo_loss                         |
| logprobs         | token_logprobs, sequence_logprob                               |
| tabular          | an exactly enumerable tabular policy: J, grad J, V/Q/A, KL, the |
|                  | five baselines, exact expected gradients (not part of the contract) |

Training on tiny causal LMs (submodules, imported on demand: they need transformers):

| module           | what                                                           |
|------------------|----------------------------------------------------------------|
| models           | a character tokenizer and tiny Llama/GPT-2 models built in code |
| tasks            | verifiable tasks with strict, partial and per-token rewards    |
| recipes          | the loss of one training step per algorithm (docs/contract.md, |
|                  | "Training steps"), with gradient accumulation                  |
| train            | the training loops, one file per algorithm, and the red flags  |

``python -m refimpl.demo`` prints a few identities verified exactly on the tabular policy.
"""

from refimpl.aggregation import aggregate
from refimpl.group import group_normalized_advantages, leave_one_out_advantages
from refimpl.kl import kl_estimate, kl_penalized_rewards
from refimpl.logprobs import sequence_logprob, token_logprobs
from refimpl.policy_loss import policy_gradient_loss, ppo_clip_loss
from refimpl.preferences import bradley_terry_loss, dpo_loss, ipo_loss
from refimpl.returns import discounted_returns, gae
from refimpl.value_loss import value_loss
from refimpl.whitening import batch_normalized_advantages

# one training step by refimpl's recipe: what every adapter's train_step is certified against
from refimpl.recipes import train_step  # noqa: E402  (after the functions it composes)
from refimpl.train import train_run  # noqa: E402  (a short run of refimpl's loop)

__version__ = "0.1.0"

#: The canonical functions of the contract, in the contract's order.
CANONICAL = (
    "discounted_returns", "gae", "kl_penalized_rewards", "group_normalized_advantages",
    "leave_one_out_advantages", "batch_normalized_advantages", "kl_estimate", "aggregate",
    "policy_gradient_loss", "ppo_clip_loss", "value_loss", "bradley_terry_loss", "dpo_loss",
    "ipo_loss", "token_logprobs", "sequence_logprob",
)


__all__ = list(CANONICAL) + ["CANONICAL", "__version__", "train_step", "train_run"]
