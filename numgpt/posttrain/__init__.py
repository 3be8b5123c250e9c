"""Post-training: turning the pre-trained document completer into a model that answers (issues 21, 22).

    chat_format.py  the chat tokens and format: conversations -> ids (and SFT's loss mask), the same format as
                    a Jinja chat_template for transformers, the chat tokens added to a model
    chat_session.py a conversation with a chat model (`numgpt chat`), and chat(lm, messages): one reply
    chatdata.py     chat JSONL in OpenAI's fine-tuning format: read and checked line by line, written atomically
    classify.py     sequence classification: GPT-2 with a linear head over the last real token (transformers'
                    GPT2ForSequenceClassification), its training through the Objective, metrics
    classdata.py    labelled text: CSV/JSONL (text, label) records, Debian's fortunes by category
    dpo.py          DPO: TRL's sigmoid loss on summed reply log-probabilities, its backward as the per-row weighted
                    cross-entropy's, the reference's sums cached with hashes, setup_dpo (`numgpt dpo`), implicit_reward
    grpo.py         GRPO's loss on sampled tokens (PPO's clipped ratio, the k3 KL penalty, per token within
                    each group) and its backward as the weighted cross-entropy's; group advantages
    lora.py         LoRA: low-rank adapters on the blocks' linear layers over a frozen base (their backward
                    beside their forward), the --lora-* flags every training command shares, PEFT folders
    packing.py      SFT data: conversations rendered with their loss masks, packed into rows, a data folder
    pairs.py        preference pairs (TRL's prompt/chosen/rejected JSONL): read and checked, written, made from
                    the synthetic tasks (the reference reply against a near miss), rendered to ids
    reward.py       the reward model: classify's head with one output, the Bradley-Terry loss through the
                    Objective, setup_reward (`numgpt reward train`), load_reward_model and its scores
    rl.py           RL on verifiable rewards: groups of answers sampled with the KV cache from the live weights,
                    rewarded by synth.check (or a reward model), setup_rl (`numgpt rl`), pass_at_1
    sft.py          supervised fine-tuning: the masked-loss Objective and setup_sft (`numgpt sft`)
    synth.py        synthetic conversations with exact answers (seven task families, train/held-out split by
                    template and operands) and the checker that scores a reply exactly (RL's verifiable reward)

A room of its own: it imports the core, and nothing in the core or the other rooms imports it.
"""

from .chat_format import (CHAT_TEMPLATE, CHAT_TOKENS, ChatTemplate, add_chat_tokens, chat_template,
                          load_chat_template, render_chat, render_for_training, with_chat_tokens)
from .classdata import Example, label_names, read_fortunes, read_labelled
from .classify import Classifier, classification_metrics, load_classifier_folder, new_classifier, train_classifier
from .chat_session import chat
from .chatdata import check_conversation, numbered_conversations, read_conversations, write_conversations
from .lora import LoraConfig, add_lora_flags, lora_from_args, lora_objective, merge, read_adapter, save_adapter, \
    with_lora
from .sft import PackedBatches, SftSetup, masked_loss, masked_value, setup_sft, sft_objective
from .synth import FAMILIES, Operands, check, check_task, extract_answer, prompt_messages, read_tasks, synthesize, \
    words_from_text

__all__ = ["LoraConfig", "add_lora_flags", "lora_from_args", "lora_objective", "merge", "read_adapter", "save_adapter",
           "with_lora", "PackedBatches", "SftSetup", "masked_loss", "masked_value", "setup_sft", "sft_objective",
           "Example", "label_names", "read_fortunes", "read_labelled", "Classifier", "classification_metrics",
           "load_classifier_folder", "new_classifier", "train_classifier",
           "check_conversation", "numbered_conversations", "read_conversations", "write_conversations", "FAMILIES",
           "Operands", "check", "check_task", "extract_answer", "prompt_messages", "read_tasks", "synthesize",
           "words_from_text", "CHAT_TEMPLATE", "CHAT_TOKENS", "ChatTemplate", "add_chat_tokens", "chat_template",
           "load_chat_template", "render_chat", "render_for_training", "with_chat_tokens", "chat"]
