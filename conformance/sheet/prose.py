"""The sections of the sheet that are definitions and trends, not computations: summarised in our
own words and linked to where the project makes each concrete."""

from __future__ import annotations


def distinctions() -> str:
    return "\n".join([
        "## Key distinctions",
        "",
        "| concept | what it is | in an LLM | where it is concrete here |",
        "|---|---|---|---|",
        "| state | what the policy conditions on | the prompt plus whatever part of the response "
        "exists so far "
        "| a prefix of the tabular policy ([`refimpl/tabular.py`](../refimpl/tabular.py)); "
        "`prompt_ids` + `completion_ids[:t]` in the loops |",
        "| action | what the policy chooses | one token at a time (a sequence-level method treats "
        "a whole response as one action) | `token_logprobs` per token, `sequence_logprob` per "
        "response ([`refimpl/logprobs.py`](../refimpl/logprobs.py)) |",
        "| reward model | a fixed scorer of whole responses | a Bradley-Terry classifier trained "
        "on preference pairs "
        "| [`refimpl/train/reward_model.py`](../refimpl/train/reward_model.py); "
        "its failure mode: reward hacking below |",
        "| value function | a learned prediction of the return from a state | the critic of PPO, "
        "a value per token | the critic in [`refimpl/train/ppo.py`](../refimpl/train/ppo.py), "
        "trained by `value_loss` ([`refimpl/value_loss.py`](../refimpl/value_loss.py)) |",
        "| reference policy | a frozen copy the policy is kept close to | the SFT model the run "
        "started from | `reference` in every loop; the KL section above |",
    ])


def trends() -> str:
    return "\n".join([
        "## Recent trends",
        "",
        "Where each trend the sheet lists stands in this project:",
        "",
        "1. **Methods without a critic** (GRPO, RLOO, REINFORCE++): reference loops, certified "
        "estimators (`group_normalized_advantages`, `leave_one_out_advantages`, "
        "`batch_normalized_advantages`) and the exact bias of each above.",
        "2. **Verifiable rewards**: every task of [`refimpl/tasks.py`](../refimpl/tasks.py) is "
        "scored by a program; the decision tree's rule-based leaf.",
        "3. **Process rewards for credit assignment**: the `decisive` task's per-token process "
        "reward and the credit-share diagnostic (red flags).",
        "4. **Training across 1000+ GPUs**: out of scope; what scale changes in the math "
        "(gradient accumulation, packed sequences, micro-batch normalisation) is certified per "
        "framework ([`docs/checks.md`](checks.md), training steps).",
        "5. **Off-policy variants**: PPO's ratio against the behaviour policy, several epochs per "
        "batch, and the exact expected gradient under a behaviour policy "
        "(`TabularPolicy.expected_gradient(..., sampler=)`).",
        "6. **Token-level Q-learning**: not covered by the project.",
    ])
