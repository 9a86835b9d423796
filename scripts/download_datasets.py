"""Downloads and unpacks the public DisWM pretraining videos (docs/method.md, "Stage 1") into `<out>/<task>/`.

The authors publish one `.tar.xz` of DreamerV2 `train_eps` episodes per DMC source task in the Hugging Face dataset
repo `MrSC320/DisWM-Pretrain-Datasets` (cheetah_run, finger_spin, reacher_easy, walker_walk; the files are several
GB). Each archive is fetched with `huggingface_hub`, unpacked safely (members with absolute paths, `..`, links or
device files are refused before anything lands in `<out>`), then checked: the `.npz` episodes are counted and one is
loaded through `replay.load_video_dataset`, exactly as pretraining will. Whatever folders the archive wraps them in,
the episodes land in `<out>/<task>/train_eps` (where scripts/sweep.py and pretrain_all.sh look).

    .venv/bin/python scripts/download_datasets.py                                # all four tasks into data/
    .venv/bin/python scripts/download_datasets.py --tasks finger_spin --out data
    .venv/bin/python scripts/download_datasets.py --unpack-only ~/Downloads/finger_spin.tar.xz   # no network

Then pretrain with `python dreamer.py --configs defaults dmc2gym --beta_vae_pretrain True --beta_vae True
--pretrain_datasets_path data/<task>/train_eps ...`.
"""
from __future__ import annotations

import argparse
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import replay as replay_lib  # noqa: E402
from tools import ConfigError  # noqa: E402

REPO_ID = 'MrSC320/DisWM-Pretrain-Datasets'
REPO_URL = f'https://huggingface.co/datasets/{REPO_ID}'
TASKS = ('cheetah_run', 'finger_spin', 'reacher_easy', 'walker_walk')
ARCHIVE_SUFFIX = '.tar.xz'


class DownloadError(ConfigError):
    """The hub could not be reached or does not have the file; the message names the manual alternative."""


def archive_name(task: str) -> str:
    return f'{task}{ARCHIVE_SUFFIX}'


def archive_url(task: str) -> str:
    return f'{REPO_URL}/resolve/main/{archive_name(task)}'


def task_of(archive: str) -> str:
    """`.../finger_spin.tar.xz` -> `finger_spin` (any .tar, .tar.gz, .tgz, .tar.xz, .tar.bz2 name)."""
    name = os.path.basename(archive)
    for suffix in (ARCHIVE_SUFFIX, '.tar.gz', '.tar.bz2', '.tgz', '.tar'):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return os.path.splitext(name)[0]


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------
def download(task: str, out: str) -> str:
    """Fetches `<task>.tar.xz` from the hub into `out` (resumable; cached files are reused); returns its path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    manual = (f'Download it by hand from {archive_url(task)} and run: python scripts/download_datasets.py '
              f'--out {out} --unpack-only path/to/{archive_name(task)}')
    not_found = tuple(getattr(hub_errors, name) for name in ('RemoteEntryNotFoundError', 'RepositoryNotFoundError')
                      if hasattr(hub_errors, name))
    try:
        return hf_hub_download(REPO_ID, archive_name(task), repo_type='dataset', local_dir=out)
    except not_found as e:
        if isinstance(e, getattr(hub_errors, 'GatedRepoError', ())):
            raise DownloadError(f'{REPO_URL} needs a Hugging Face login (hf auth login). {manual}') from None
        raise DownloadError(f"The hub answered that {archive_name(task)} is not in {REPO_URL} "
                            f"({type(e).__name__}); the published tasks are {', '.join(TASKS)}. Check --tasks against "
                            f"{REPO_URL}/tree/main.") from None
    except Exception as e:  # no network, offline mode, proxy, timeout: all mean the same thing to the user
        raise DownloadError(f'Could not download {archive_url(task)} ({type(e).__name__}: {e}). {manual}') from None


# --------------------------------------------------------------------------------------------------------------------
# Safe unpacking
# --------------------------------------------------------------------------------------------------------------------
def _refuse(member: tarfile.TarInfo, archive: str, why: str):
    raise ConfigError(f"Refusing to unpack '{archive}': member '{member.name}' {why}. The archive is damaged or "
                      f"not a DisWM dataset; nothing was unpacked.")


def _safe_filter(archive: str):
    """A tarfile extraction filter: plain files and folders inside the destination only (then the stdlib's 'data'
    filter where this Python has it, which also drops unsafe permission bits)."""
    data_filter = getattr(tarfile, 'data_filter', None)

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        name = member.name.replace('\\', '/')
        if name.startswith('/') or os.path.isabs(member.name) or (len(name) > 1 and name[1] == ':'):
            _refuse(member, archive, 'has an absolute path')
        if '..' in name.split('/'):
            _refuse(member, archive, "leaves the destination folder ('..')")
        if not (member.isfile() or member.isdir()):
            _refuse(member, archive, 'is a link or special file')
        if data_filter is not None:
            try:
                member = data_filter(member, dest)
            except tarfile.FilterError as e:
                _refuse(member, archive, f'is unsafe ({e})')
        return member

    return check


def _move_merge(src: str, dst: str) -> None:
    """Moves the contents of folder `src` into `dst`, merging folders; existing files are replaced."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        source, target = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(source) and os.path.isdir(target):
            _move_merge(source, target)
        else:
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(source, target)


def unpack(archive: str, out: str, task: str | None = None) -> str:
    """Unpacks `archive` into `<out>/<task>/` (task from the file name by default) with the episodes in
    `<out>/<task>/train_eps`; returns that episode folder.

    The archive is streamed once into a temporary folder inside `out` and moved into place only when every member
    passed the safety filter, so a refused archive leaves nothing behind.
    """
    if not os.path.isfile(archive):
        raise ConfigError(f"Archive '{archive}' not found.")
    task = task or task_of(archive)
    dest = os.path.join(out, task)
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.unpack-{task}-', dir=out)
    try:
        check = _safe_filter(archive)
        try:
            with tarfile.open(archive, 'r|*') as tar:  # stream: one pass over the (xz) data
                if hasattr(tarfile, 'data_filter'):
                    tar.extractall(staging, filter=check)
                else:  # Python < 3.11.4 has no extraction filters: the same checks, member by member
                    for member in tar:
                        tar.extract(check(member, staging), staging)
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise ConfigError(f"'{archive}' is not a readable tar archive ({type(e).__name__}: {e}); download it "
                              f"again.") from None
        except OSError as e:
            raise ConfigError(f"Unpacking '{archive}' into '{out}' failed ({e}): check the free disk space and "
                              f"write permissions of --out.") from None
        # Wrapping folders (`<task>/`, `logdir/`, ...) are dropped so that the episodes always end up in
        # `<out>/<task>/train_eps`, where scripts/sweep.py and pretrain_all.sh look for them.
        root = staging
        entries = os.listdir(root)
        while len(entries) == 1 and entries[0] != 'train_eps' and os.path.isdir(os.path.join(root, entries[0])):
            root = os.path.join(root, entries[0])
            entries = os.listdir(root)
        has_train_eps = os.path.isdir(os.path.join(root, 'train_eps'))
        _move_merge(root, dest if has_train_eps else os.path.join(dest, 'train_eps'))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(dest, 'train_eps')


# --------------------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------------------
def verify(folder: str, min_length: int = 2) -> dict:
    """Counts the `.npz` episodes under `folder` and loads the first through `replay.load_video_dataset`, with all
    of its checks (readable, 64x64 RGB uint8, long enough), exactly as pretraining will.

    Returns a dict: folder, episodes (files), sample (path), sample_frames, image_shape and keys of the sample.
    Raises ConfigError when the folder holds no usable episode.
    """
    files = replay_lib.list_episodes(folder, recursive=True)
    if not files:
        raise ConfigError(f"No .npz episodes under '{folder}': the archive holds no DreamerV2 episodes.")
    sample = files[0]
    with tempfile.TemporaryDirectory(prefix='verify-') as probe:
        os.symlink(os.path.abspath(sample), os.path.join(probe, os.path.basename(sample)))
        try:
            episodes, _ = replay_lib.load_video_dataset(probe, min_length=min_length)
        except ConfigError as e:
            raise ConfigError(f"Episode '{sample}' fails the pretraining loader's checks: {e}") from None
    image = episodes[0]['image']
    return dict(folder=folder, episodes=len(files), sample=sample, sample_frames=int(len(image)),
                image_shape=tuple(int(d) for d in image.shape[1:]), keys=sorted(replay_lib.load_episode(sample)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=f'Download and unpack the DisWM pretraining videos ({REPO_URL}).',
                                     allow_abbrev=False)
    parser.add_argument('--tasks', default=','.join(TASKS),
                        help=f"comma-separated source tasks (default: all of {', '.join(TASKS)})")
    parser.add_argument('--out', default='data',
                        help='destination; the episodes of each task land in <out>/<task>/train_eps')
    parser.add_argument('--unpack-only', '--unpack_only', dest='unpack_only', nargs='+', metavar='ARCHIVE',
                        help='skip the download: unpack and check these local archives (<task>.tar.xz)')
    parser.add_argument('--keep-archives', '--keep_archives', dest='keep_archives', action='store_true',
                        help='keep downloaded archives in <out> after unpacking (they are deleted by default)')
    parser.add_argument('--force', action='store_true',
                        help='download and unpack even when <out>/<task> already holds episodes')
    args = parser.parse_args(argv)
    try:
        if args.unpack_only:
            jobs = [(task_of(path), path) for path in args.unpack_only]
        else:
            jobs = [(task.strip(), None) for task in args.tasks.split(',') if task.strip()]
            unknown = [task for task, _ in jobs if task not in TASKS]
            if unknown:
                print(f"Warning: {', '.join(unknown)} not among the published tasks ({', '.join(TASKS)}); trying "
                      f"anyway.", file=sys.stderr)
        for task, archive in jobs:
            dest = os.path.join(args.out, task)
            if archive is None and not args.force and replay_lib.list_episodes(dest):
                print(f'{dest} already holds episodes; skipping the download (--force to redo).')
            else:
                downloaded = archive is None
                if downloaded:
                    print(f'Downloading {archive_url(task)} ...')
                    archive = download(task, args.out)
                print(f'Unpacking {archive} into {dest} ...')
                unpack(archive, args.out, task)
                if downloaded and not args.keep_archives:
                    os.remove(archive)
            episodes_dir = os.path.join(dest, 'train_eps')
            info = verify(episodes_dir if os.path.isdir(episodes_dir) else dest)
            print(f"{task}: {info['episodes']} episodes in {dest}; checked {os.path.basename(info['sample'])} "
                  f"({info['sample_frames']} frames of {'x'.join(map(str, info['image_shape']))}, keys "
                  f"{', '.join(info['keys'])}). Pretrain with --pretrain_datasets_path {info['folder']}")
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
