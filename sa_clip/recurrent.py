r"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) as unrolled cells of plain tensor ops.

torch's recurrent modules run one fused kernel (``aten::lstm``, ``aten::gru``, ...) that
``torch.func`` cannot batch over samples or parameter vectors ("Batching rule not implemented
for aten::lstm.input"), and whose per-sample gradients under ``vmap`` fail to broadcast. A
:class:`~sa_clip.Problem` therefore replaces each of them, in its private copy of the model, by
an :class:`UnrolledRNN` with **the same parameters** (same names, same tensors, same order in
``theta``) whose forward is the textbook recursion, one time step after another:

.. math::
   \text{RNN:}\quad h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
   \qquad \phi = \tanh \text{ or ReLU};

   \text{LSTM:}\quad (i, f, g, o) = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh},\quad
   c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g),\quad h_t = W_{hr}\,(\sigma(o) \tanh(c_t));

   \text{GRU:}\quad r = \sigma(\cdot_r),\ z = \sigma(\cdot_z),\
   n = \tanh(W_{in} x_t + b_{in} + r (W_{hn} h_{t-1} + b_{hn})),\
   h_t = (1 - z)\, n + z\, h_{t-1}

(``W_{hr}`` only with ``proj_size > 0``), stacked over ``num_layers`` and both directions when
``bidirectional``. Inputs, outputs and the optional initial state follow torch's modules
exactly (batched or unbatched, ``batch_first``); dropout between layers is off (the problem's
model is in eval mode). The numbers equal torch's to round-off (checked in the tests at 1e-12
in float64). The loop is over time steps, never over samples.

Example
-------
>>> import torch
>>> lstm = torch.nn.LSTM(3, 4, batch_first=True).double()
>>> x = torch.randn(2, 5, 3, dtype=torch.float64)
>>> u = UnrolledRNN(lstm)
>>> bool(torch.allclose(u(x)[0], lstm(x)[0]))
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


class UnrolledRNN(nn.Module):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with a forward that ``torch.func`` can transform.

    Built from the module it replaces, whose parameters it takes over (not copies); see the
    module docstring for the recursions.
    """

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        if not isinstance(rnn, RECURRENT):
            raise TypeError(f"`rnn` must be an nn.LSTM, nn.GRU or nn.RNN, got "
                            f"{type(rnn).__name__}.")
        self.kind = type(rnn).__name__               # "LSTM" | "GRU" | "RNN"
        self.mode = rnn.mode
        for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "bidirectional", "proj_size"):
            setattr(self, attr, getattr(rnn, attr))
        self.nonlinearity = getattr(rnn, "nonlinearity", "tanh")
        for name, p in rnn._parameters.items():      # same names, same order, same tensors
            self.register_parameter(name, p)

    def extra_repr(self) -> str:
        return (f"{self.kind}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"batch_first={self.batch_first})")

    def _cell(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
              w_hh: torch.Tensor, b_hh: torch.Tensor | None, w_hr: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One time step: ``gi`` is the input projection ``W_ih x_t + b_ih``."""
        gh = h @ w_hh.T
        if b_hh is not None:
            gh = gh + b_hh
        if self.kind == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if w_hr is not None:
                h = h @ w_hr.T
            return h, c
        if self.kind == "GRU":
            ir, iz, in_ = gi.chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            return (1 - z) * n + z * h, None
        pre = gi + gh
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)), None

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"sa_clip's unrolled {self.kind} takes a tensor input, got "
                            f"{type(input).__name__} (packed sequences are not supported).")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1 if not self.batch_first else 0)
        if self.batch_first:
            x = x.transpose(0, 1)                                    # (L, B, H_in)
        dirs = 2 if self.bidirectional else 1
        h_out = self.proj_size if self.proj_size > 0 else self.hidden_size
        b = x.shape[1]
        if hx is None:
            h0 = x.new_zeros(self.num_layers * dirs, b, h_out)
            c0 = x.new_zeros(self.num_layers * dirs, b, self.hidden_size) \
                if self.kind == "LSTM" else None
        else:
            h0, c0 = hx if self.kind == "LSTM" else (hx, None)
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
        hs, cs = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(self, "weight_ih" + sfx)
                w_hh = getattr(self, "weight_hh" + sfx)
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
                w_hr = getattr(self, "weight_hr" + sfx) if self.proj_size > 0 else None
                gi = layer_in @ w_ih.T                               # all steps at once
                if b_ih is not None:
                    gi = gi + b_ih
                k = layer * dirs + d
                h = h0[k]
                c = None if c0 is None else c0[k]
                steps = range(gi.shape[0] - 1, -1, -1) if d else range(gi.shape[0])
                seq = [None] * gi.shape[0]
                for t in steps:
                    h, c = self._cell(gi[t], h, c, w_hh, b_hh, w_hr)
                    seq[t] = h
                outs.append(torch.stack(seq))                        # (L, B, h_out)
                hs.append(h)
                if c is not None:
                    cs.append(c)
            layer_in = outs[0] if dirs == 1 else torch.cat(outs, -1)
        out = layer_in.transpose(0, 1) if self.batch_first else layer_in
        h_n = torch.stack(hs)
        c_n = torch.stack(cs) if cs else None
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return out, ((h_n, c_n) if self.kind == "LSTM" else h_n)


def unroll_recurrent(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` replaced, in place, by an
    :class:`UnrolledRNN` on the same parameters (the root itself is returned replaced)."""
    if isinstance(model, RECURRENT):
        return UnrolledRNN(model)
    for name, child in list(model.named_children()):
        new = unroll_recurrent(child)
        if new is not child:
            setattr(model, name, new)
    return model


__all__ = ["UnrolledRNN", "unroll_recurrent", "RECURRENT"]
