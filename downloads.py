"""Public caption datasets, downloaded, checked and unpacked into the layout that --data-root reads.

    python downloads.py flickr8k --dest data/flickr8k     # about 1.1 GB
    python downloads.py coco --dest data/coco             # about 19 GB: train2017, val2017, captions

urllib does the fetching: torch.hub.download_url_to_file and torchvision's download_url delete a partial file on
failure (an 18 GB COCO zip would start again from zero) and accept a connection that closes early as a whole file;
here a short body is an error, and a rerun asks the server for the rest (an HTTP Range request) or, when the server
does not do ranges, starts the file over. Each zip is fetched to a temporary name and renamed when whole, checked
(readable, safe member names, the files the dataset needs), then unpacked; zipfile checks every member's CRC.

Two marker files in the destination say how far a download got: dest/.download-<dataset>.unpacking.json while
files are being unpacked, dest/.download-<dataset>.json once the whole dataset is in place. No official
checksums exist: the SHA-256 of each zip is recorded in the second, so that two copies can be compared.
"""
import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from data_sources import (FLICKR_IMAGES, FLICKR_TEXT, FLICKR_TOKENS, KAGGLE_CAPTIONS, KAGGLE_IMAGES, DataSourceError,
                          atomic_write_json, detect, list_images)

FLICKR8K_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
COCO_IMAGES_URL = "http://images.cocodataset.org/zips"
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations"
DOWNLOAD_TIMEOUT_S = 60  # seconds without a byte before a download counts as cut
CHUNK = 1 << 20  # bytes read and written at a time
PARTIAL = ".part"  # the suffix of a file being downloaded: never read as an archive
SKIPPED_MEMBERS = ("__MACOSX/", ".DS_Store", "Thumbs.db")  # what macOS and Windows zip tools add


@dataclass(frozen=True)
class Archive:
    """One zip of a dataset: where it comes from, its approximate size, and where its contents go."""
    file: str  # its name, at the base URL (or --mirror) and in --dest while it waits to be unpacked
    base_url: str
    size: str  # said before downloading
    folder: str  # under --dest; a single top folder inside the zip is replaced by this one
    needs: tuple  # file names (or ".jpg": any JPEG) the zip must hold, or it is refused before unpacking


@dataclass(frozen=True)
class DownloadSpec:
    name: str
    archives: tuple
    counts: object  # function(dest) -> {what: number}, counted after unpacking
    official: dict  # the published counts; a difference is a warning
    problems: object  # function(dest) -> [what keeps dest from being usable]; [] when it is usable


def count_jpgs(folder):
    return len([n for n in list_images(folder) if n.lower().endswith(".jpg")]) if folder.is_dir() else 0


def flickr8k_counts(dest):
    tokens = dest / FLICKR_TEXT / FLICKR_TOKENS
    n_lines = sum(1 for line in tokens.read_bytes().splitlines() if line.strip()) if tokens.is_file() else 0
    return {"images": count_jpgs(dest / FLICKR_IMAGES[0]), "caption lines": n_lines}


def flickr8k_problems(dest):
    """What keeps dest from being a usable Flickr8k (the original layout or Kaggle's): no layout, captions that
    cannot be read, or no image on disk with a caption (an empty image folder, an empty caption file)."""
    try:
        source = detect(dest)
        if source is None or source.kind not in ("flickr8k", "kaggle"):
            return [f"no {FLICKR_IMAGES[0]}/ with {FLICKR_TEXT}/{FLICKR_TOKENS}, nor {KAGGLE_IMAGES}/ with "
                    f"{KAGGLE_CAPTIONS}"]
        data = source.read()
    except (DataSourceError, OSError) as e:
        return [str(e)]
    if not data.captions:
        return [f"no image in {source.image_dir} has a caption in {source.inputs[0].name}"]
    return []


def coco_caption_files(dest):
    return [dest / "annotations" / f"captions_{split}2017.json" for split in ("train", "val")]


def coco_counts(dest):
    return {"train2017 images": count_jpgs(dest / "train2017"), "val2017 images": count_jpgs(dest / "val2017"),
            "caption files": sum(f.is_file() for f in coco_caption_files(dest))}


def coco_problems(dest):
    """What keeps dest from being a usable COCO 2017: an image folder without JPEGs, a caption file that is
    absent or cut short."""
    problems = [f"{dest / folder}/ holds no .jpg" for folder in ("train2017", "val2017")
                if not count_jpgs(dest / folder)]
    problems += [f"{f} is absent or not a whole JSON object" for f in coco_caption_files(dest)
                 if not whole_json_object(f)]
    return problems


def whole_json_object(path, edge=64):
    """Whether a file starts with `{` and ends with `}` (whitespace aside): a cheap check that a caption file is
    whole, where json.load of COCO's 90 MB of train captions would take seconds and a gigabyte of memory."""
    try:
        with open(path, "rb") as f:
            head = f.read(edge).lstrip()
            f.seek(max(0, os.fstat(f.fileno()).st_size - edge))
            tail = f.read().rstrip()
    except OSError:
        return False
    return head.startswith(b"{") and tail.endswith(b"}")


DOWNLOADS = {
    "flickr8k": DownloadSpec(
        "Flickr8k",
        (Archive("Flickr8k_Dataset.zip", FLICKR8K_URL, "1.1 GB", FLICKR_IMAGES[0], (".jpg",)),
         Archive("Flickr8k_text.zip", FLICKR8K_URL, "2.3 MB", FLICKR_TEXT, (FLICKR_TOKENS,))),
        flickr8k_counts, {"images": 8091, "caption lines": 40460}, flickr8k_problems),
    "coco": DownloadSpec(
        "COCO 2017",
        (Archive("train2017.zip", COCO_IMAGES_URL, "18 GB", "train2017", (".jpg",)),
         Archive("val2017.zip", COCO_IMAGES_URL, "1 GB", "val2017", (".jpg",)),
         Archive("annotations_trainval2017.zip", COCO_ANNOTATIONS_URL, "241 MB", "annotations",
                 ("captions_train2017.json", "captions_val2017.json"))),
        coco_counts, {"train2017 images": 118287, "val2017 images": 5000, "caption files": 2}, coco_problems),
}


class DownloadError(RuntimeError):
    """A download or an archive that cannot be used; the message says what to do."""


class Offline(DownloadError):
    """The server cannot be reached at all."""


def archive_url(archive, mirror=None):
    return f"{(mirror or archive.base_url).rstrip('/')}/{archive.file}"


def fetch(url, path, progress=True):
    """Download url to path through path + PARTIAL, renamed when every byte has arrived.

    A PARTIAL file left by an earlier attempt is continued with a Range request; a server that answers with
    the whole file instead (status 200) has it written from the start. A body shorter than its Content-Length
    raises DownloadError and keeps the PARTIAL file for the next attempt.
    """
    path = Path(path)
    part = path.with_name(path.name + PARTIAL)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: the partial file is probably whole; redo it
            part.unlink()
            return fetch(url, path, progress)
        raise DownloadError(f"{url}: the server answered {e.code} {e.reason}; check the URL (or --mirror)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Offline(f"cannot reach {url} ({reason})") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # a fresh start: the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        got = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name,
                   disable=None if progress else True, leave=False)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"{url}: the download was cut after {got:,} bytes ({type(e).__name__}); "
                                "run the command again to continue it") from None
        finally:
            bar.close()
    if total is not None and got < total:
        raise DownloadError(f"{url}: the connection closed after {got:,} of {total:,} bytes; run the command again "
                            "to continue the download")
    os.replace(part, path)
    return path


def member_path(name):
    """A zip member's name as a relative POSIX path, or DownloadError for one that would leave the destination
    (an absolute path, a drive letter, or a `..` part)."""
    clean = name.replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise DownloadError(f"refused: the archive member {name!r} would be written outside the destination")
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def archive_members(zf):
    """{member: relative path under the archive's folder}: files only, without macOS/Windows extras, and with a
    single top folder (if every file sits in one) removed, so that both ways of zipping land in one place."""
    files = {}
    for info in zf.infolist():
        rel = member_path(info.filename)
        if info.is_dir() or not rel.parts or rel.name.startswith("._") or \
                any(s.rstrip("/") in rel.parts for s in SKIPPED_MEMBERS):
            continue
        files[info] = rel
    tops = {rel.parts[0] for rel in files.values()}
    if len(tops) == 1 and all(len(rel.parts) > 1 for rel in files.values()):
        files = {info: PurePosixPath(*rel.parts[1:]) for info, rel in files.items()}
    return files


def open_archive(path, archive):
    """The zip file and its members, checked: readable, member names safe, the needed files present."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{path} is not a readable zip archive ({e}); delete it and run the command again to "
                            "download it anew") from None
    try:
        members = archive_members(zf)
    except DownloadError as e:
        zf.close()
        raise DownloadError(f"{path}: {e}") from None
    names = {rel.name for rel in members.values()}
    missing = [n for n in archive.needs if not (any(x.lower().endswith(n) for x in names) if n.startswith(".")
                                               else n in names)]
    if missing:
        zf.close()
        what = ", ".join("image files (*.jpg)" if n.startswith(".") else n for n in missing)
        raise DownloadError(f"{path} holds no {what}: it is not the {archive.file} this dataset needs")
    return zf, members


def extract(path, archive, dest):
    """Unpack an archive into dest/archive.folder, each file through a temporary name; returns the file count."""
    zf, members = open_archive(path, archive)
    root = (Path(dest) / archive.folder).resolve()
    with zf:
        for info, rel in tqdm(members.items(), desc=f"unpacking {archive.file}", unit="file", leave=False,
                              disable=None):
            target = root.joinpath(*rel.parts)
            if root not in target.resolve().parents:  # member_path refused `..`; a symlinked folder must not leak
                raise DownloadError(f"refused: {info.filename!r} would be written outside {root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            try:
                with zf.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(tmp, target)
            except zipfile.BadZipFile as e:  # a CRC mismatch: the download is damaged
                raise DownloadError(f"{path} is damaged ({e}); delete it and run the command again") from None
            finally:
                tmp.unlink(missing_ok=True)
    return len(members)


def sha256_of(path):
    """The SHA-256 of a file, read a CHUNK at a time (hashlib.file_digest would need Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def done_marker(dest, key):
    """Written last, when the whole dataset is in place."""
    return Path(dest) / f".download-{key}.json"


def unpacking_marker(dest, key):
    """Written before the first file is unpacked and removed after the done marker: while it is there, what the
    folder holds may be half unpacked, however complete it looks."""
    return Path(dest) / f".download-{key}.unpacking.json"


def by_hand_message(spec, dest, mirror, reason):
    """What to do without network: each file, its URL, and where to put it."""
    lines = [f"{reason}. Without network, download these files by hand and put them in {dest}/:"]
    lines += [f"  {a.file} ({a.size}) from {archive_url(a, mirror)}" for a in spec.archives]
    lines.append("then run this command again: it unpacks and checks them there")
    return "\n".join(lines)


def check_counts(spec, dest):
    """Count what was unpacked; warn when it differs from the official counts, fail when it is not usable."""
    counts = spec.counts(Path(dest))
    print(f"{dest}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    for key, official in spec.official.items():
        if counts[key] != official:
            print(f"warning: {counts[key]:,} {key}, but the official {spec.name} has {official:,}; the download or "
                  "the archive may be incomplete (delete the folder and download again if this is unexpected)")
    problems = spec.problems(Path(dest))
    if problems:
        raise DownloadError(f"{dest} is not usable after unpacking ({'; '.join(problems)}); delete the zips there and "
                            "run the command again")
    return counts


def already_there(key, dest):
    """Whether dest already holds the dataset: a finished download (its marker), or, where no unpack was left
    unfinished, a layout that --data-root reads with every needed part present and readable. Says why a folder
    that holds something is not trusted."""
    spec, dest = DOWNLOADS[key], Path(dest)
    if done_marker(dest, key).is_file():
        return True
    if unpacking_marker(dest, key).is_file():
        print(f"note: unpacking {spec.name} into {dest} did not finish last time; it is done again")
        return False
    if not dest.is_dir() or not [p for p in dest.iterdir() if not p.name.endswith((".zip", ".zip" + PARTIAL))]:
        return False  # nothing there yet but zips: no note needed
    problems = spec.problems(dest)
    if problems:
        print(f"note: {dest} does not hold a whole {spec.name} ({'; '.join(problems)}); downloading it")
    return not problems


def download(key, dest, mirror=None, keep_zips=False, progress=True):
    """Download, check and unpack a dataset into dest; returns its counts (None when it was already there).

    Each zip goes to dest/<file> (through a .part name), is checked (readable, safe member names, the needed
    files present), unpacked, and deleted unless keep_zips. A marker file written last says the whole dataset is
    in place, so a rerun after success does nothing; another, there from the first file unpacked until then, makes
    a rerun after an interruption unpack again. A zip put in dest by hand is used as it is.
    """
    spec = DOWNLOADS[key]
    dest = Path(dest)
    if already_there(key, dest):
        print(f"{dest} already holds {spec.name}; nothing to download")
        return None
    dest.mkdir(parents=True, exist_ok=True)
    todo = [a for a in spec.archives if not (dest / a.file).is_file()]
    if todo:
        print(f"downloading {spec.name} into {dest}: " + ", ".join(f"{a.file} (~{a.size})" for a in todo))
    for archive in spec.archives:
        path = dest / archive.file
        if not path.is_file():
            try:
                fetch(archive_url(archive, mirror), path, progress)
            except Offline as e:
                raise Offline(by_hand_message(spec, dest, mirror, str(e))) from None
        open_archive(path, archive)[0].close()  # every zip is checked before any is unpacked
    atomic_write_json({"dataset": spec.name, "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                      unpacking_marker(dest, key))
    files = {}
    for archive in spec.archives:
        path = dest / archive.file
        # No official checksums exist: this one lets two copies be compared.
        files[archive.file] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
        n = extract(path, archive, dest)
        print(f"unpacked {n:,} files of {archive.file} ({files[archive.file]['bytes']:,} bytes, sha256 "
              f"{files[archive.file]['sha256'][:16]}...) into {dest / archive.folder}")
    counts = check_counts(spec, dest)
    atomic_write_json({"dataset": spec.name, "counts": counts, "files": files,
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, done_marker(dest, key))
    unpacking_marker(dest, key).unlink()
    if not keep_zips:
        for archive in spec.archives:
            (dest / archive.file).unlink(missing_ok=True)
    print(f"{spec.name} is ready: use --data-root {dest}")
    return counts


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Download, check and unpack a public caption dataset into the "
                                                 "layout that --data-root reads.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DOWNLOADS),
                        help="flickr8k: Flickr8k_Dataset.zip (~1.1 GB) and Flickr8k_text.zip; coco: train2017.zip "
                             "(~18 GB), val2017.zip (~1 GB), annotations_trainval2017.zip (~241 MB)")
    parser.add_argument("--dest", default=None, help="folder to unpack into; None: data/<dataset>")
    parser.add_argument("--mirror", default=None,
                        help="a base URL that replaces the official ones; the files' names are kept (URL/<file>)")
    parser.add_argument("--keep-zips", action="store_true", help="keep the zip files after unpacking them")
    args = parser.parse_args(argv)
    dest = args.dest or f"data/{args.dataset}"
    try:
        download(args.dataset, dest, args.mirror, args.keep_zips)
    except (DownloadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
