"""The optimizer machinery shared by every update rule: binding to a model's flat buffers,
flat state, clipping, mixed precision, the step counters on the device, and state_dict.

One ``step()`` queues, for the whole model: the global gradient norm when clipping or loss
scaling needs it (one launch), and one fused update over the flat buffer whose last block then
advances the counters, each parameter's step count and the dynamic loss scale. Frozen parameters,
and those without a fresh gradient, are left out inside that same launch (``optim.segments``).
Nothing waits for the device, and every number that changes from step to step (the learning rate
from the schedule, Adam's step counts, the loss scale) is read on the device, so a recorded CUDA
graph stays valid.
"""

from __future__ import annotations

from gpunn import checks
from gpunn.kernels.update_rules import RULES
from gpunn.nn.parameter import Parameter
from gpunn.optim.schedules import Schedule, as_schedule
from gpunn.optim.segments import Segments
from gpunn.optim.state import (APPLIED, GROWTH_INTERVAL, INITIAL_LOSS_SCALE, LOSS_SCALE, SKIPPED, checked_counters,
                               checked_parameter_steps, constructor_arguments)

_LR_TABLE_MINIMUM = 1024


class Optimizer:
    """Base class: one update rule from ``optim.rules`` over the flat parameters of one model."""

    rule_name = ""

    def __init__(self, params, lr, weight_decay, decay_biases, max_grad_norm, numbers, flag):
        owner = type(self).__name__
        self._owner = owner
        self._flat = None
        self.schedule = lr
        self.weight_decay = weight_decay
        self.decay_biases = decay_biases
        self.max_grad_norm = max_grad_norm
        self.rule = RULES[self.rule_name]
        self.numbers, self.flag = numbers, bool(flag)
        self.params: list[Parameter] = []
        self._steps_issued = 0
        #: Whether ``loss_scale`` was ever handed out: a float16 model's gradients must carry it.
        self._scale_requested = False
        if params is not None:
            self.bind(params)

    # --- learning rate --------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.schedule(self._steps_issued)

    @lr.setter
    def lr(self, value) -> None:
        """A number or a schedule; takes effect at the next update without re-recording a graph."""
        self.schedule = value

    @property
    def schedule(self) -> Schedule:
        """The learning-rate schedule; setting it (a number or a schedule) is setting ``lr``."""
        return self._schedule

    @schedule.setter
    def schedule(self, value) -> None:
        self._schedule = as_schedule(self._owner, value)
        if self._flat is not None:  # the device's table of rates follows
            self._fill_lr_table(self._lr_table.size)

    def reserve_steps(self, count: int) -> None:
        """Make the device's table of learning rates cover ``count`` more updates (fit calls it once;
        TrainStep before each step, outside any graph recording); a schedule that ends before them
        (OneCycle) raises its error here, before any of them runs."""
        if self._flat is not None and self.schedule.config() != self._table_source:  # edited since bound
            self._fill_lr_table(self._lr_table.size)
        last_step, final = self.schedule.last_step, self._steps_issued + count - 1
        if last_step is not None and final > last_step:
            self.schedule(final)  # OneCycle's own error (CosineDecay holds its final rate)
        elif last_step is None:
            self.schedule(final)  # a rate beyond the float range (gamma > 1) raises before any update
        if self._flat is not None and self._lr_table.size > 1 and final >= self._lr_table.size \
                and last_step is None:  # else the table holds the whole schedule already
            self._fill_lr_table(max(2 * self._lr_table.size, final + 1))

    @property
    def steps_issued(self) -> int:
        """Updates queued so far (the schedule's step of the next one), as the host counts them;
        TrainStep keeps it in step with the device across graph recordings and replays."""
        return self._steps_issued

    @steps_issued.setter
    def steps_issued(self, count: int) -> None:
        self._steps_issued = count

    def _fill_lr_table(self, length: int) -> None:
        backend = self._flat.backend
        length = 1 if type(self.schedule).__name__ == "Constant" else max(length, _LR_TABLE_MINIMUM)
        if self.schedule.last_step is not None:  # all of it at once, and the device holds the last rate
            length = self.schedule.last_step + 1  # beyond: the table never grows, so no graph records again
        values = self.schedule.table(length)
        self._table_source = self.schedule.config()  # what the table holds: an edit is noticed by reserve_steps
        if self._lr_table is not None and self._lr_table.size == length:
            self._lr_table[...] = backend.asarray(values, "float64")  # same array: a graph stays valid
        else:
            self._lr_table = backend.asarray(values, "float64")

    # --- binding ----------------------------------------------------------------------------
    def bind(self, params) -> "Optimizer":
        """Take ``params`` (model.parameters() or a subset) and make the flat state for them."""
        wrong = TypeError(f"{self._owner}: params must be a list of Parameters such as model.parameters(), "
                          f"got {type(params).__name__}")
        if callable(getattr(params, "parameters", None)):  # a model, itself a sequence of layers
            raise wrong
        try:
            params = list(params)
        except TypeError:
            raise wrong from None
        if not params:
            raise ValueError(f"{self._owner}: no parameters to optimize (pass model.parameters())")
        for index, parameter in enumerate(params):
            if not isinstance(parameter, Parameter):
                raise TypeError(f"{self._owner}: parameter {index} is {type(parameter).__name__}, not a gpunn "
                                "Parameter (pass model.parameters())")
            if parameter.owner is None:
                raise ValueError(f"{self._owner}: {parameter!r} belongs to no model; build a gn.Sequential from "
                                 "its layers first (the optimizer works on the model's flat buffers)")
        flats = {id(parameter.owner) for parameter in params}
        if len(flats) > 1:
            raise ValueError(f"{self._owner}: the parameters belong to {len(flats)} different models; one "
                             "optimizer updates one model (make one optimizer per model)")
        flat = params[0].owner
        if self._flat is not None:
            if flat is not self._flat:
                raise ValueError(f"{self._owner} is already bound to another model; make a new optimizer for "
                                 "this model (one optimizer's state belongs to one model)")
            if {id(p) for p in params} == {id(p) for p in self.params}:
                return self
            raise ValueError(f"{self._owner} is already bound to other parameters of this model; make a new "
                             "optimizer to optimize a different set")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{self._owner}: a parameter is listed twice")
        self._flat, self.params = flat, sorted(params, key=flat.offset)
        backend, dtype = flat.backend, flat.dtype
        self.compute_dtype = "float64" if dtype.name == "float64" else "float32"
        self.mixed_precision = dtype.name == "float16"
        self._segments = segments = Segments(flat, self.params)
        self._states = [backend.zeros((segments.state_size,), self.compute_dtype) for _ in self.rule.states]
        self._master = None
        if self.mixed_precision:
            self._master = backend.zeros((segments.state_size,), "float32")
            for index in range(segments.count):
                start, stop, state_start = segments.state_range(index)
                self._master[state_start:state_start + stop - start] = flat.values[start:stop].astype("float32")
        self._scalars = backend.asarray([0.0, 0.0, INITIAL_LOSS_SCALE if self.mixed_precision else 1.0, 0.0, 0.0],
                                        "float64")
        self._norm = backend.zeros((1,), self.compute_dtype)
        self._scratch = backend.optimizer_scratch(self.compute_dtype)
        self._lr_table = None
        self._fill_lr_table(_LR_TABLE_MINIMUM)
        return self

    @property
    def weight_decay(self) -> float:
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value) -> None:
        """Checked here too: a value set after construction takes effect at the next step."""
        self._weight_decay = checks.number(self._owner, "weight_decay", value, low=0.0)

    @property
    def max_grad_norm(self):
        """The global L2 norm gradients are clipped to, or None (no clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value) -> None:
        self._max_grad_norm = None if value is None else checks.positive(self._owner, "max_grad_norm", value)

    @property
    def decay_biases(self) -> bool:
        return self._decay_biases

    @decay_biases.setter
    def decay_biases(self, value: bool) -> None:
        self._decay_biases = checks.flag(self._owner, "decay_biases", value)

    def check_model(self, model) -> None:
        """A clear error unless this optimizer's parameters belong to ``model``."""
        if self._flat is None:
            raise ValueError(f"{self._owner} is bound to no model yet; pass model.parameters() to it (or train "
                             "with it) first")
        if self._flat is not model.flat:
            raise ValueError(f"{self._owner} is bound to the parameters of another model; make a new "
                             "optimizer for this model (one optimizer's state belongs to one model)")

    # --- the step ----------------------------------------------------------------------------
    @property
    def loss_scale(self):
        """The loss scale as a 1-element float64 device array (1 unless the model is float16): pass it
        to the loss's backward, ``model.backward(loss.backward(optimizer.loss_scale))``, as TrainStep does."""
        self._require_bound("loss_scale")
        self._scale_requested = True
        return self._scalars[LOSS_SCALE:LOSS_SCALE + 1]

    def _require_bound(self, what):
        if self._flat is None:
            raise RuntimeError(f"{self._owner}.{what}: no parameters bound; pass model.parameters() "
                               "(or let fit bind the model)")

    def step(self) -> None:
        """Update every bound parameter that has a fresh gradient (all of them after a backward) and is
        trainable, in one launch: frozen ones (``trainable = False``) and those whose gradient is None,
        their state and their step count stay as they are, as torch.optim skips a parameter whose
        ``grad`` is None (its bias correction later counts its own updates only)."""
        self._require_bound("step")
        fresh = [p.grad_valid and p.trainable for p in self.params]
        if not any(fresh):
            return
        if self.mixed_precision and not self._scale_requested:  # the update divides by the scale
            raise RuntimeError(f"{self._owner}.step: a float16 model's gradients must be scaled by the optimizer's "
                               "loss scale (the update divides by it): model.backward(loss.backward("
                               "optimizer.loss_scale)), as TrainStep and fit do")
        self.reserve_steps(1)
        backend, segments = self._flat.backend, self._segments
        segments.select(fresh, backend)
        dynamic = self.mixed_precision
        if self.max_grad_norm is not None or dynamic:  # the norm of the updated gradients, as torch's clip_grad_norm_
            backend.global_norm(self._flat.grads, out=self._norm, scratch=self._scratch, segments=segments.table)
        hyper = tuple(self.numbers.get(name, 0.0) if name else 0.0 for name in self.rule.numbers)
        backend.optimizer_update(self.rule, self._flat.values, self._flat.grads, self._states, self._master, self._scalars,
                                 self._lr_table, self._norm, hyper, self.flag, self.weight_decay,
                                 self._flat.decay_end_for(self.decay_biases), self.max_grad_norm or 0.0, dynamic,
                                 segments.table, segments.steps, growth_interval=float(GROWTH_INTERVAL),
                                 scratch=self._scratch)
        self._steps_issued += 1

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad_valid = False

    def device_arrays(self) -> list:
        """Every array the update reads or writes besides parameters, gradients and ``scratch_arrays``: what
        rank 0 broadcasts to start data parallelism (each parameter's step count included)."""
        self._require_bound("device_arrays")
        arrays = [*self._states, self._scalars, self._norm, self._lr_table, self._segments.steps]
        return arrays + ([self._master] if self._master is not None else [])

    def scratch_arrays(self) -> list:
        """Device arrays of the norm and update kernels that are kept alive with a recorded graph and
        are never part of the state: their scratch (each launch leaves its tickets at 0) and the segment
        table, which every rank derives from the same bound and frozen parameters (not broadcast)."""
        self._require_bound("scratch_arrays")
        return [self._segments.table] + ([] if self._scratch is None else list(self._scratch))

    @property
    def skipped_steps(self) -> int:
        """Updates skipped because a float16 gradient overflowed (reads the device: once per epoch)."""
        return 0 if self._flat is None else int(self._flat.backend.to_numpy(self._scalars)[SKIPPED])

    # --- state --------------------------------------------------------------------------------
    def _rule_arguments(self) -> dict:
        """The rule's own constructor arguments (subclasses), e.g. momentum or betas."""
        return {}

    def hyperparameters(self) -> dict:
        return {"weight_decay": self.weight_decay, "decay_biases": self.decay_biases,
                "max_grad_norm": self.max_grad_norm, **self._rule_arguments()}

    def config(self) -> dict:
        return {"type": self._owner, "schedule": self.schedule.config(), **self.hyperparameters()}

    def state_dict(self) -> dict:
        """{"config": JSON-able hyperparameters, schedule and step count, "arrays": host arrays}; the
        array "step" holds each parameter's updates applied (torch's state["step"]), in flat order."""
        self._require_bound("state_dict")
        backend = self._flat.backend
        arrays = {"scalars": backend.to_numpy(self._scalars).copy(), "step": backend.to_numpy(self._segments.steps).copy()}
        for name, state in zip(self.rule.states, self._states):
            arrays[name] = backend.to_numpy(state).copy()
        if self._master is not None:
            arrays["master"] = backend.to_numpy(self._master).copy()
        shapes = [list(parameter.shape) for parameter in self.params]
        return {"config": {**self.config(), "steps": self._steps_issued, "parameter_shapes": shapes},
                "arrays": arrays}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned: hyperparameters, schedule, counters and flat state.
        Everything is checked before anything changes: a refused state leaves the optimizer as it was.
        A state from before per-parameter step counts (no "step" array: one count for the model) gives
        every parameter that count, the step its updates used."""
        self._require_bound("load_state_dict")
        where = f"{self._owner}.load_state_dict"
        try:
            config, arrays = dict(state["config"]), dict(state["arrays"])
        except (TypeError, KeyError, ValueError) as error:
            raise ValueError(f"{where}: expected {{'config': ..., 'arrays': ...}} from state_dict(), "
                             f"got {type(state).__name__}") from error
        if config.get("type") != self._owner:
            raise ValueError(f"{where}: the state is of a {config.get('type')!r} optimizer")
        wanted = set(self.config()) | {"steps", "parameter_shapes"}
        if set(config) != wanted:
            missing, unknown = sorted(wanted - set(config)), sorted(set(config) - wanted)
            raise ValueError(f"{where}: the config " + " and ".join(
                ([f"lacks {missing}"] if missing else []) + ([f"has unknown {unknown}"] if unknown else []))
                + " (pass what state_dict() returned, unchanged)")
        shapes = [list(parameter.shape) for parameter in self.params]
        if config["parameter_shapes"] != shapes:
            raise ValueError(f"{where}: the state is for parameters of shapes {config['parameter_shapes']}, "
                             f"these have {shapes} (a different model?)")
        try:
            restored = type(self)(None, **constructor_arguments(config))  # checks every hyperparameter
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from error
        expected = {"scalars": self._scalars, "step": self._segments.steps, **dict(zip(self.rule.states, self._states))}
        if self._master is not None:
            expected["master"] = self._master
        legacy = {"step"} - set(arrays)  # a state with one step count for the model: before per-parameter counts
        if set(arrays) != set(expected) - legacy:
            raise ValueError(f"{where}: state arrays {sorted(arrays)} do not match "
                             f"{sorted(expected)} (a model of another dtype or size?)")
        for name, target in expected.items():
            if name in legacy:
                continue
            shape = getattr(arrays[name], "shape", None)
            if shape is None or tuple(shape) != tuple(target.shape):
                got = type(arrays[name]).__name__ if shape is None else f"shape {tuple(shape)}"
                raise ValueError(f"{where}: {name} must be an array of shape {tuple(target.shape)} for this model, "
                                 f"got {got} (a different model?)")
        steps = checked_counters(where, config["steps"], [float(value) for value in arrays["scalars"]])
        backend = self._flat.backend
        if legacy:  # every parameter took that count's steps
            arrays["step"] = backend.to_numpy(backend.zeros((self._segments.count,), "float64") +
                                              float(arrays["scalars"][APPLIED]))
        checked_parameter_steps(where, [float(value) for value in arrays["step"]],
                                float(arrays["scalars"][APPLIED]))
        converted = {}
        for name, target in expected.items():
            try:
                converted[name] = backend.asarray(arrays[name], target.dtype)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{where}: {name} cannot be read as a {target.dtype} array: {error}") from None
            if not bool(backend.xp.isfinite(converted[name]).all()):  # an Inf exp_avg_sq would freeze training
                raise ValueError(f"{where}: {name} holds NaN or Inf (or values too large for {target.dtype}); "
                                 "save refuses such a state, and so does loading it")
        for name, target in expected.items():
            target[...] = converted[name]
        self.__dict__.update({k: v for k, v in vars(restored).items()
                              if k in ("_schedule", "_weight_decay", "_max_grad_norm", "numbers", "flag")})
        self.decay_biases = restored.decay_biases
        self._steps_issued = steps
        self._fill_lr_table(max(self._lr_table.size, self._steps_issued + 1))

    def __repr__(self) -> str:
        return f"{self._owner}(lr={self.schedule!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items()) + ")"


__all__ = ["Optimizer", "Schedule"]
