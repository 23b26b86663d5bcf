"""Where a run's tasks come from on a GPU: images held on the device, or meta-batches prefetched to it.

A GPU step of the MAML paper's Omniglot tasks takes a few milliseconds, so host work per iteration shows
directly in the run's time. :func:`place` puts a task distribution where the step can read it without
waiting for the host:

- an image set that fits in a quarter of the device's free memory (Omniglot's 32,460 28x28 images with
  their rotations are 102 MB; mini-ImageNet's 60,000 84x84 colour images 1.3 GB) is copied there once
  (:meth:`fastmaml.tasks.EpisodicTasks.to`): each meta-batch is then one gather on the device and only the
  sampled indices (a few kB) cross from the host;
- anything else is drawn by a background thread a few meta-batches ahead, into pinned memory, and copied
  to the device without waiting (:class:`Prefetcher`).

Either way the tasks are the same as on the CPU: indices and synthetic tasks are drawn from the run's CPU
generator, in the same order, and the generator's state after each consumed meta-batch is what a checkpoint
saves, so a run resumes on any device to the same task stream.
"""

from __future__ import annotations

import logging
import queue
import threading

import torch

from fastmaml.tasks.batch import TaskBatch

log = logging.getLogger(__name__)
DEVICE_FRACTION = 0.25  # the share of the device's free memory an image set may take to be held there
AHEAD = 3  # meta-batches a prefetcher keeps ready


def place(tasks, device: torch.device | str, name: str = "tasks", prefetch: bool = True):
    """``tasks`` arranged for ``device`` (unchanged on the CPU); the choice is logged.

    ``prefetch=False`` (meta-validation and meta-test, which sample from fresh generators) leaves tasks
    that do not fit where they are: each batch is then copied as the evaluation asks for it.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return tasks
    nbytes, move = getattr(tasks, "nbytes", None), getattr(tasks, "to", None)
    if nbytes is not None and move is not None and _fits(nbytes, device):
        log.info("%s: %.0f MB of images held on %s; each meta-batch is gathered there", name, nbytes / 1e6, device)
        return move(device)
    if not prefetch:
        return tasks
    log.info("%s: meta-batches prefetched to %s by a background thread", name, device)
    return Prefetcher(tasks, device)


def _fits(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_FRACTION * free


class Prefetcher:
    """``tasks.sample_tasks`` run ``ahead`` meta-batches in advance by a background thread, each batch in
    pinned memory and copied to ``device`` without blocking the host.

    It draws from its own copy of the caller's generator and, as each batch is consumed, sets the caller's
    generator to the state after that batch: the caller sees exactly the stream (and the checkpointable
    generator state) of calling ``tasks.sample_tasks`` itself. If the caller's generator was moved by
    something else (a resume, another sampler), the thread restarts from the new state.

    Example:
        >>> import fastmaml as fm
        >>> tasks, generator = Prefetcher(fm.Sinusoid(), "cpu"), torch.Generator().manual_seed(0)
        >>> batch = tasks.sample_tasks(25, generator)
        >>> torch.equal(batch.support_x, fm.Sinusoid().sample_tasks(25, torch.Generator().manual_seed(0)).support_x)
        True
        >>> tasks.close()
    """

    def __init__(self, tasks, device: torch.device | str, ahead: int = AHEAD) -> None:
        self.tasks, self.device, self.ahead = tasks, torch.device(device), ahead
        self._pin = self.device.type == "cuda"
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._expected: torch.Tensor | None = None  # the caller's generator state the queue continues from
        self._size = 0

    def __getattr__(self, name: str):  # everything else (num_classes, image_shape, ...) is the tasks'
        if name == "tasks":
            raise AttributeError(name)
        return getattr(self.tasks, name)

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        state = generator.get_state()
        moved = self._expected is None or not torch.equal(state, self._expected)
        if self._thread is None or moved or tasks != self._size:
            self._start(tasks, generator)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, after = item
        generator.set_state(after)
        self._expected = after
        return batch

    def _start(self, tasks: int, generator: torch.Generator) -> None:
        self.close()
        own = torch.Generator()
        own.set_state(generator.get_state())
        self._size, self._expected = tasks, generator.get_state()
        self._stop, self._queue = threading.Event(), queue.Queue(maxsize=self.ahead)
        self._thread = threading.Thread(target=self._fill, args=(tasks, own, self._stop, self._queue),
                                        name="fastmaml-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, tasks: int, generator: torch.Generator, stop: threading.Event, out: queue.Queue) -> None:
        try:
            while not stop.is_set():
                batch = self.tasks.sample_tasks(tasks, generator)
                if self._pin:
                    batch = batch._map(lambda t: t.pin_memory(), batch.total)
                _put(out, (batch.to(self.device, non_blocking=True), generator.get_state()), stop)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(out, error, stop)

    def close(self) -> None:
        """Stop the background thread (a new one starts at the next ``sample_tasks``)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


def _put(out: queue.Queue, item: object, stop: threading.Event) -> None:
    """``out.put(item)``, giving up once ``stop`` is set (the consumer is gone and the queue may stay full)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
