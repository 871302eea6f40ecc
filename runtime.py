"""Run-time plumbing of dreamer.py: the stop signals, the lock of a logdir, exits on bad input and on a full disk,
and checkpoints checked before they are restored."""

import contextlib
import errno
import fcntl
import functools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile

# TensorFlow's start-up notices (absl's note on logging before its start, oneDNN's, cudart's and, without a GPU,
# cuInit's error) read as failures. They are dropped unless TF_CPP_MIN_LOG_LEVEL is set, which then applies as ever.
NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|\] oneDNN custom operations are on|cudart_stub\.cc:"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc:\d+\] computation placer already registered|TF-TRT Warning: Could not find TensorRT"
)


@contextlib.contextmanager
def notices_dropped(drop=True):
    """What the block writes to the process's stderr (file descriptor 2, where TensorFlow's C++ logs), less NOTICES."""
    if not drop:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not NOTICES.search(line)))
            sys.stderr.flush()


with notices_dropped("TF_CPP_MIN_LOG_LEVEL" not in os.environ):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")  # Starts the CUDA platform (cuInit).

from tools import count_episodes, count_steps, named, write_atomic  # noqa: E402

# Exit codes: 1 for a crash (or an environment that keeps crashing), 2 for bad input (exit_2), 3 for a full disk.
DISK_FULL = 3

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """Ctrl-C and SIGTERM. The first asks the run to stop where its checkpoint holds all of it: after the train
    steps and the episodes under way, so that the resumed run is the one that was not stopped. A second stops
    sooner, losing the train burst and episodes under way: it interrupts a wait on the environments at once, and
    otherwise stops the run at its next train step or wait. It never raises inside TensorFlow, whose scopes a
    KeyboardInterrupt can leave broken for the checkpoint that follows. A third ends the process, as kill -9 does."""

    def __init__(self):
        self.signals = 0
        self._interruptible = False

    def install(self):
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signals += 1
        if self.signals == 1:  # Unbuffered: a print() here could land inside another one.
            message = "Stopping after the train steps and episodes under way (again to stop at once).\n"
            os.write(sys.__stdout__.fileno(), message.encode())
        elif self.signals == 2 and self._interruptible:
            raise KeyboardInterrupt
        elif self.signals > 2:
            for other in STOP_SIGNALS:
                signal.signal(other, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __call__(self):
        return self.signals > 0

    def now(self):
        return self.signals > 1

    @contextlib.contextmanager
    def interruptible(self, value=True):
        """A block where a second signal raises KeyboardInterrupt at once; with False, one where it waits (to the
        block's end within an interruptible block). Any TensorFlow code called within must be in the latter."""
        outer = self._interruptible
        try:
            self._interruptible = value
            if value and self.now():
                raise KeyboardInterrupt
            yield
        finally:
            self._interruptible = outer
        if outer and self.now():
            raise KeyboardInterrupt


STOP = Stop()


def exit_2(message):
    """Bad input or a fault found after parse_config (an environment, a checkpoint, the lock): exit as
    parser.error does, without a traceback."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def lock_logdir(logdir):
    """An OS lock on the logdir until the returned file closes (the kernel drops it even on kill -9)."""
    logdir.mkdir(parents=True, exist_ok=True)
    lock = (logdir / "lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        exit_2(
            f"argument --logdir: {logdir} is in use by a training run ({holder}); wait for it to end or stop "
            "it, or use another --logdir (--eval_only may run beside it)"
        )
    with named(logdir / "lock"):
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
    return lock


# A full disk.

NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def no_space(error):
    """For an error that says a write found no space left on its device (ENOSPC) or was over a disk quota (EDQUOT),
    as an OSError or a TensorFlow error quoting the system's message, or for one raised while handling such an
    error: (what ran out, the path written or None where the errors name none); else None. The first one counts,
    as others (the flush of a file being closed) followed from it, and the first path named."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) not in (None, *chain):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    found = [found for found in map(_no_space, reversed(chain)) if found]
    return (found[0][0], next((path for _, path in found if path), None)) if found else None


def _no_space(error):
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        name = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes, os.PathLike)) else None
        return NO_SPACE[error.errno], name
    if isinstance(error, tf.errors.OpError):
        # "{{function_node ...}} <path>; No space left on device [Op:SaveV2]"
        first = re.sub(r"^\{\{.*?\}\}\s*", "", str(error.message).strip().split("\n")[0])
        for code, reason in NO_SPACE.items():
            match = re.search(rf"^(.*?);?\s*{re.escape(os.strerror(code))}", first)
            if match:
                return reason, re.sub(r"\.tempstate\d+$", "", match.group(1)) or None
    return None


def exits_on_full_disk(function):
    """dreamer.py's train(config, ...), evaluate(config) and export(config): where a write finds the disk full, the
    run ends with one line (full_disk) and exit code DISK_FULL instead of a traceback. It saves no checkpoint more:
    the rerun resumes from the last one."""

    @functools.wraps(function)
    def wrapper(config, *args, **kwargs):
        try:
            return function(config, *args, **kwargs)
        except Exception as e:
            if no_space(e) is None:
                raise
            full_disk(e, config)

    return wrapper


def full_disk(error, config):
    """Exit DISK_FULL with one line: what ran out, writing what, where the space of the logdir went, and what the
    same command does once space is freed."""
    reason, path = no_space(error)
    logdir, export = pathlib.Path(config.logdir), config.get("export")
    if export:
        after = f"Nothing was written to {export}: free space and run the same command again."
    elif config.get("eval_only"):
        after = "The run is as it was, and eval.jsonl has no line of this evaluation: free space and run the same "
        after += "command again."
    else:
        after = resumes(config) + ": run the same command again."
    try:  # Where the space went.
        usage = f" ({size(free_space(path or export or logdir))} free there"
        usage += ")" if export else f"; {folder_usage(logdir)})"
    except OSError:
        usage = ""
    where = f" writing {path}" if path else ""
    with contextlib.suppress(OSError):  # Where the standard error is on the full disk too, the exit code tells.
        print(f"{os.path.basename(sys.argv[0])}: error: {reason}{where}{usage}. {after}", file=sys.stderr)
        sys.stderr.flush()
    sys.exit(DISK_FULL)


def resumes(config):
    """Where a training run resumes from: the newest checkpoint that reads back whole, else the episodes on disk."""
    directory, episodes = pathlib.Path(config.logdir) / "checkpoints", pathlib.Path(config.logdir) / "episodes"
    for path in reversed(checkpoint_paths(directory)):
        if not unreadable(path):
            step = path.rsplit("-", 1)[-1]
            return f"The run resumes from checkpoint {step} ({directory}) once space is freed"
    count = count_episodes(episodes)
    if count:
        steps = count_steps(episodes, config.action_repeat)
        return (
            f"The run resumes from its {count} episode{'s' if count > 1 else ''} on disk ({steps} env steps in "
            f"{episodes}) once space is freed"
        )
    return "Nothing of the run is on disk yet; it starts once space is freed"


def checkpoint_paths(directory):
    """The checkpoints that the state file in `directory` lists, oldest first (none where it does not read)."""
    try:
        state = tf.train.get_checkpoint_state(directory) if pathlib.Path(directory).exists() else None
    except Exception:  # noqa: BLE001 (an OpError or a ParseError where the state file itself is broken)
        state = None
    return list(state.all_model_checkpoint_paths) if state else []


def free_space(path):
    path = pathlib.Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def folder_usage(logdir):
    """What a run folder holds, by kind, largest first: 'LOGDIR holds 11.2 MiB: events 8.1, episodes 2.0, ...'."""
    kinds = {}
    for entry in os.scandir(logdir) if os.path.isdir(logdir) else ():
        kind = "events" if entry.name.startswith("events.out.tfevents") else entry.name
        kind = kind if kind in ("episodes", "checkpoints", "events", "metrics.jsonl") else "other"
        kinds[kind] = kinds.get(kind, 0) + tree_size(entry.path)
    total = sum(kinds.values())
    unit = 2**30 if total >= 2**30 else 2**20
    parts = [f"{kind} {n / unit:.1f}" for kind, n in sorted(kinds.items(), key=lambda k: -k[1])]
    parts = ", ".join(part for part in parts if not part.endswith(" 0.0"))
    return f"{logdir} holds {size(total)}" + (f": {parts}" if parts else "")


def tree_size(path):
    """Bytes of the regular files at or under `path` (links not followed)."""
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if not stat.S_ISDIR(info.st_mode):
        return 0
    return sum(tree_size(entry.path) for entry in os.scandir(path))


def size(n):
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class Checkpoints:
    """The checkpoints of a run's `trackables` in `directory`, the two newest kept, each with the scalars its run
    had yet to log (pending.json); restored from the newest that reads back whole. `logdir`: for messages."""

    def __init__(self, directory, trackables, logdir):
        self.directory, self._trackables, self._logdir = directory, trackables, logdir
        self._checkpoint = tf.train.Checkpoint(**trackables)
        self._manager = None  # Made after restore(), which may move corrupt checkpoints out of the rotation.
        self._saved = None

    def save(self, step, pending=None):
        if self._saved == step:  # Nothing changes between two calls at one env step (e.g. a stop after a test).
            return
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, 2)
        if pending is not None:  # Scalars not yet written, for the line a resumed run writes next.
            self.directory.mkdir(parents=True, exist_ok=True)
            # With the last checkpoint's, for a rerun from it where this one is not written whole.
            previous = {k: v for k, v in self._pending().items() if k != "previous"}
            write_atomic(
                self.directory / "pending.json", json.dumps({"step": step, "scalars": pending, "previous": previous})
            )
        try:
            path = self._manager.save(checkpoint_number=step)
        except Exception:
            self._discard(step)
            raise
        self._saved = step
        print(f"Saved checkpoint {path}.", flush=True)

    def _discard(self, step):
        """What a save of `step` that failed (a full disk) left: its temporary folder and state file, and its files
        under their final names, half written, unless the checkpoint state lists it (then a rerun checks it)."""
        name = f"ckpt-{step}"
        shutil.rmtree(self.directory / f"{name}_temp", ignore_errors=True)
        listed = {pathlib.Path(p).name for p in checkpoint_paths(self.directory)}
        files = list(self.directory.glob("checkpoint.tmp*"))
        files += [] if name in listed else list(self.directory.glob(f"{name}.*"))
        for file in files:
            with contextlib.suppress(OSError):
                file.unlink()

    def restore(self, resume=False, optional=()):
        """The newest checkpoint that reads back whole restored: its env step (None where there is none), the names
        of `optional` it lacks (written before they were) and its pending scalars (or None). With `resume` newer ones
        that do not read back are moved to checkpoints/corrupt/, out of the rotation that keeps two intact
        checkpoints and of the way of the resumed run's checkpoints."""
        path, corrupt = newest_intact(self.directory)
        if path is None:
            return None, (), None
        step = int(path.rsplit("-", 1)[-1])
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        missing = set(optional) - saved
        checkpoint = self._checkpoint
        if missing:
            checkpoint = tf.train.Checkpoint(**{k: v for k, v in self._trackables.items() if k not in missing})
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            exit_2(
                f"checkpoint {path} does not fit this run ({str(e).splitlines()[0][:300]}). Use the flags it "
                f"was trained with (see {self._logdir / 'config.json'}), or a new --logdir."
            )
        if resume and corrupt:
            move_aside(self.directory, corrupt)
        print(f"Loaded checkpoint {path}.", flush=True)
        saved = self._pending()
        for entry in (saved, saved.get("previous") or {}):
            if entry.get("step") == step:
                return step, missing, entry["scalars"]
        return step, missing, None

    def _pending(self):
        try:  # Written whole (write_atomic), if at all.
            return json.loads((self.directory / "pending.json").read_text())
        except (OSError, ValueError):
            return {}


def newest_intact(directory):
    """The newest checkpoint in `directory` that reads back whole, or None where there is none, and the newer ones
    that do not (disk trouble, a copy interrupted half way), reported. Exits 2 where none reads back."""
    state = tf.train.get_checkpoint_state(directory)
    paths, corrupt = list(state.all_model_checkpoint_paths) if state else [], []
    for path in reversed(paths):
        problem = unreadable(path)
        if not problem:
            return path, paths[paths.index(path) + 1 :]
        print(f"Skipping corrupt checkpoint {path} ({problem}).", flush=True)
        corrupt.append(f"{path} ({problem})")
    if paths:
        exit_2(
            f"no checkpoint in {directory} reads back whole: {'; '.join(corrupt)}. Restore them from a "
            "copy, or move them away to start over, or use a new --logdir."
        )
    return None, []


def unreadable(path):
    """What is wrong with a checkpoint whose tensors do not all read back, or None: checked before restoring any."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 (IndexError when truncated, DataLossError for a bad checksum, NotFoundError)
        return one_line(e)
    return None


def one_line(error):
    first = str(error).strip().split("\n")[0]
    return f"{type(error).__name__}: {first[:200]}"


def move_aside(directory, bad):
    """Corrupt checkpoints to checkpoints/corrupt/, the list the CheckpointManager rotates without them."""
    state = tf.train.get_checkpoint_state(directory)
    (directory / "corrupt").mkdir(exist_ok=True)
    for path in bad:
        for file in directory.glob(f"{pathlib.Path(path).name}.*"):
            file.rename(directory / "corrupt" / file.name)
        print(f"Moved the corrupt checkpoint {path} to {directory / 'corrupt'}.", flush=True)
    kept = len(state.all_model_checkpoint_paths) - len(bad)
    names = [pathlib.Path(p).name for p in state.all_model_checkpoint_paths[:kept]]
    stamps = list(state.all_model_checkpoint_timestamps)[:kept] or None
    tf.compat.v1.train.update_checkpoint_state(str(directory), names[-1], names, None, stamps)


def make_strategy(config):
    """The tf.distribute strategy of --strategy; made before anything else runs on a device."""
    if config.strategy == "default" or config.eval_only:
        return tf.distribute.get_strategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = config.replicas or len(gpus)
        if count > len(gpus):
            exit_2(f"argument --replicas: {count} replicas but only {len(gpus)} GPUs are visible")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)])
    count = config.replicas or 1
    # Logical CPU devices share the same cores: for testing the distributed code path, not for speed.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])


def setup(config):
    for gpu in tf.config.list_physical_devices("GPU"):  # Before the strategy starts the devices.
        if config.gpu_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    strategy = make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        exit_2(
            f"argument --batch_size: the global batch of {config.batch_size} does not split evenly "
            f"across {replicas} replicas; use a multiple of {replicas}"
        )
    if replicas > 1:
        devices = ", ".join(strategy.extended.worker_devices)
        print(
            f"Strategy {config.strategy}: {replicas} replicas (here: {devices}), "
            f"{config.batch_size // replicas} sequences each.",
            flush=True,
        )
    policy = {"16": "mixed_float16", "bf16": "mixed_bfloat16", "32": "float32"}[config.precision]
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic is None:
        config.deterministic = not tf.config.list_physical_devices("GPU")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy
