"""A tiny local stand-in for StanfordAIMI/CheXagent-2-3b: remote code in its interface, written to disk.

This is a test double of the hub's remote code, not the model. The real
repository cannot be downloaded here (no hub access) and its code cannot be
copied, so a test writes these files into a model folder and loads them the
way the real model is loaded: `trust_remote_code=True` through transformers'
dynamic-module machinery (which checks the files' imports), `from_pretrained`
with `torch_dtype`, then `generate`. What it keeps of CheXagent-2's interface:

- its tokenizer is remote code with `from_list_format([{"image": PATH}, {"text": ...}])`,
  a chat template over `{"from": ..., "value": ...}` turns and
  `apply_chat_template(..., add_generation_prompt=True)`; the grounding tags
  `<|ref|>`, `<|/ref|>`, `<|box|>`, `<|/box|>` are special tokens;
- the model reads the image path out of the prompt's tokens and opens the file itself;
- its visual resampler builds `pos_embed` with `.float()`, so a model loaded with
  `torch_dtype=torch.bfloat16` keeps that parameter in float32 and its forward
  fails with a dtype mismatch unless the loaded model is cast, as the real one does;
- its visual module imports what the real one imports (`REMOTE_CODE_IMPORTS`)
  except torchvision, whose PyPI wheel does not import beside a CPU torch;
- `generate` (greedy, `output_scores`, `return_dict_in_generate`) answers
  `<|ref|>Nodule/Mass<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>` in integer percent
  of the width and height, or "No nodule/mass detected." when nothing stands out.

The answer is computed, not learnt: the box surrounds the brightest pixels of
the image, found in numpy. The neural part (patch embedding, resampler,
lm_head) still runs on every step and adds a small term to the logits, so a
dtype error in it stops generation just as in the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

from localization_task.chexagent2.backend import REMOTE_CODE_IMPORTS

ANSWER_BOX_HALF_PCT = 4  # half the side of the drawn box, in percent of the image
# The brightest pixel must exceed the image's 95th percentile by this much (0-255) to be a finding.
FINDING_CONTRAST = 60

CONFIGURATION = '''\
from transformers import PretrainedConfig


class CheXagentDoubleConfig(PretrainedConfig):
    model_type = "chexagent_double"

    def __init__(self, vocab_size=128, hidden_size=16, image_size_px=32, patch_px=4, num_queries=4,
                 eos_token_id=0, pad_token_id=0, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.image_size_px, self.patch_px, self.num_queries = image_size_px, patch_px, num_queries
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
'''

# What the real visual module imports, less torchvision: its PyPI wheel needs the CUDA torch it
# was built for and does not import beside a CPU torch. cv2 and einops are used below.
VISUAL_IMPORTS = [name for name in REMOTE_CODE_IMPORTS if name != "torchvision"]
VISUAL = '''\
import numpy as np
import torch
from PIL import Image
from torch import nn


def read_image(path, size_px):
    """The model opens the file itself, as CheXagent-2 does."""
    grey = np.asarray(Image.open(path).convert("L"))
    return grey, cv2.resize(grey, (size_px, size_px), interpolation=cv2.INTER_AREA)


class Resampler(nn.Module):
    def __init__(self, num_patches, hidden_size, num_queries):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, hidden_size))
        # Built in float32 whatever dtype the model is loaded in, like CheXagent-2's resampler.
        self.pos_embed = nn.Parameter(torch.randn(num_patches, hidden_size).float())
        self.kv_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, patches):
        keys = self.kv_proj(patches + self.pos_embed)  # float32 + bf16 -> float32 into a bf16 layer
        weights = torch.softmax(self.query @ keys.transpose(-1, -2), dim=-1)
        return weights @ keys


class VisualEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.size_px, self.patch_px = config.image_size_px, config.patch_px
        num_patches = (config.image_size_px // config.patch_px) ** 2
        self.patch_embed = nn.Linear(config.patch_px**2, config.hidden_size)
        self.resampler = Resampler(num_patches, config.hidden_size, config.num_queries)

    def forward(self, small_grey):
        pixels = torch.from_numpy(small_grey).to(self.patch_embed.weight.dtype) / 255
        patches = einops.rearrange(pixels, "(h p) (w q) -> (h w) (p q)", p=self.patch_px, q=self.patch_px)
        return self.resampler(self.patch_embed(patches))
'''

MODELING = '''\
import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_chexagent_double import CheXagentDoubleConfig
from .modeling_visual import VisualEncoder, read_image
from .tokenization_chexagent_double import CheXagentDoubleTokenizer

BOX_HALF_PCT = __BOX_HALF_PCT__
FINDING_CONTRAST = __FINDING_CONTRAST__


def answer_text(grey):
    """Box around the brightest pixels, in integer percent of width and height."""
    if float(grey.max()) - float(np.percentile(grey, 95)) < FINDING_CONTRAST:
        return "No nodule/mass detected.<|endoftext|>"
    ys, xs = np.nonzero(grey == grey.max())  # the brightest pixels: a clipped spot is a flat disc
    cx, cy = round(100 * (xs.mean() + 0.5) / grey.shape[1]), round(100 * (ys.mean() + 0.5) / grey.shape[0])
    x1, y1 = max(cx - BOX_HALF_PCT, 0), max(cy - BOX_HALF_PCT, 0)
    x2, y2 = min(cx + BOX_HALF_PCT, 100), min(cy + BOX_HALF_PCT, 100)
    return f"<|ref|>Nodule/Mass<|/ref|><|box|>({x1},{y1}),({x2},{y2})<|/box|><|endoftext|>"


class CheXagentDoubleForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CheXagentDoubleConfig

    def __init__(self, config):
        super().__init__(config)
        self.visual = VisualEncoder(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.codes = CheXagentDoubleTokenizer()
        self.post_init()

    def _init_weights(self, module):
        pass  # random init is enough: the answer does not depend on the weights

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}  # no cache: the whole sequence every step

    def forward(self, input_ids, attention_mask=None, return_dict=True, **kwargs):
        ids = input_ids[0].tolist()
        path = self.codes.image_path(ids)
        grey, small = read_image(path, self.config.image_size_px)
        image_tokens = self.visual(small)
        text = self.embed_tokens(input_ids[0])
        hidden = torch.cat([image_tokens, text]).mean(dim=0)
        logits = self.lm_head(hidden).float()
        answer = self.codes.encode_plain(answer_text(grey))
        step = ids[::-1].index(self.codes.assistant_id)  # tokens generated so far
        target = answer[step] if step < len(answer) else self.config.eos_token_id
        logits = 0.1 * torch.tanh(logits)
        logits[target] += 8.0
        logits = logits.expand(input_ids.shape[1], -1)[None]
        return CausalLMOutputWithPast(logits=logits.to(self.lm_head.weight.dtype))
'''

TOKENIZATION = '''\
from transformers import PreTrainedTokenizer

SPECIALS = ["<|endoftext|>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<img>", "</img>",
            "<|ref|>", "<|/ref|>", "<|box|>", "<|/box|>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\\n"]


class CheXagentDoubleTokenizer(PreTrainedTokenizer):
    """One token per character, plus the special tags."""

    vocab_files_names = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs):
        self.vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
        self.inverse = {i: token for token, i in self.vocab.items()}
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|endoftext|>")
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("additional_special_tokens", SPECIALS[2:])
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return len(self.vocab)

    @property
    def assistant_id(self):
        return self.vocab["<|assistant|>"]

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text, **kwargs):
        return list(text)

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, self.vocab["<unk>"])

    def _convert_id_to_token(self, index):
        return self.inverse.get(index, "<unk>")

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return ()

    def encode_plain(self, text):
        """Ids of a text whose special tags are spelled out, without the tokenizer machinery."""
        ids, i = [], 0
        while i < len(text):
            tag = next((s for s in SPECIALS if text.startswith(s, i)), None)
            ids.append(self.vocab[tag] if tag else self._convert_token_to_id(text[i]))
            i += len(tag) if tag else 1
        return ids

    def image_path(self, ids):
        start, end = ids.index(self.vocab["<img>"]), ids.index(self.vocab["</img>"])
        return "".join(self.inverse[i] for i in ids[start + 1 : end])

    def from_list_format(self, list_format):
        text = ""
        for number, element in enumerate(e for e in list_format if "image" in e):
            text += f"Picture {number + 1}: <img>{element['image']}</img>\\n"
        return text + "".join(e["text"] for e in list_format if "text" in e)
'''

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['from'] == 'system' %}<|system|>{{ message['value'] }}\n"
    "{% elif message['from'] == 'human' %}<|user|>{{ message['value'] }}\n"
    "{% else %}<|assistant|>{{ message['value'] }}<|endoftext|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

BUILD = """\
import sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM
folder = sys.argv[1]
torch.manual_seed(0)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(folder)
"""


def write_remote_code(folder: Path, extra_import: str | None = None) -> Path:
    """Config, tokenizer config and the four code files; `extra_import` adds `import NAME` to the visual module."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "configuration_chexagent_double.py": CONFIGURATION,
        "modeling_visual.py": "".join(f"import {name}\n" for name in VISUAL_IMPORTS + [extra_import] if name) + VISUAL,
        "modeling_chexagent_double.py": MODELING.replace("__BOX_HALF_PCT__", str(ANSWER_BOX_HALF_PCT)).replace(
            "__FINDING_CONTRAST__", str(FINDING_CONTRAST)),
        "tokenization_chexagent_double.py": TOKENIZATION,
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    config = {
        "model_type": "chexagent_double",
        "architectures": ["CheXagentDoubleForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_chexagent_double.CheXagentDoubleConfig",
            "AutoModelForCausalLM": "modeling_chexagent_double.CheXagentDoubleForCausalLM",
        },
        "vocab_size": 128,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = {
        "tokenizer_class": "CheXagentDoubleTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chexagent_double.CheXagentDoubleTokenizer", None]},
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return folder
