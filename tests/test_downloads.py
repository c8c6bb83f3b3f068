"""`python downloads.py`: against a local HTTP server that these tests start, serving tiny zips they
build (the real archives are never fetched). Each server binds 127.0.0.1 on a free port, answers with a socket
timeout, and is shut down when its test ends."""
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

import data_sources as ds
import downloads as dl
from test_data_sources import make_flickr

N_IMAGES, N_CAPTIONS = 10, 50  # make_flickr's defaults: 6 + 2 + 2 images, 5 captions each


@pytest.fixture(autouse=True)
def converted_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.CONVERTED_ENV, str(tmp_path / "converted"))


class Server:
    """Files by name at http://127.0.0.1:PORT/NAME. `cut`: names whose next answer stops halfway (Content-Length
    says the whole size); `ranges`: whether Range requests get a 206 with the rest. `requests` logs
    (name, Range header) of every request."""

    def __init__(self, files, ranges=True):
        self.files, self.ranges, self.cut, self.requests = dict(files), ranges, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the server thread

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                asked = self.headers.get("Range")
                if asked and server.ranges:
                    start = int(asked.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut:
                    server.cut.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def names(self):
        return [name for name, _ in self.requests]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers = []

    def start(files, ranges=True):
        servers.append(Server(files, ranges))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def zip_bytes(entries):
    """A zip in memory from {member name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def flickr_zips(tmp_path, images_in_folder=True, text_in_folder=False, macosx=True):
    """The two Flickr8k zips, built from a tiny Flickr8k folder: files inside one folder or at the zip's root,
    with or without the __MACOSX/ folder that macOS's zip tool adds."""
    root, _ = make_flickr(tmp_path / "source")
    images = {("Flicker8k_Dataset/" if images_in_folder else "") + p.name: p.read_bytes()
              for p in sorted((root / "Flicker8k_Dataset").iterdir())}
    text = {("Flickr8k_text/" if text_in_folder else "") + p.name: p.read_bytes()
            for p in sorted((root / "Flickr8k_text").iterdir())}
    if macosx:
        images["__MACOSX/Flicker8k_Dataset/._img000_a1b2.jpg"] = b"\x00\x05\x16\x07 resource fork"
        text["__MACOSX/._Flickr8k.token.txt"] = b"\x00\x05\x16\x07"
    return {"Flickr8k_Dataset.zip": zip_bytes(images), "Flickr8k_text.zip": zip_bytes(text)}


def download(dest, mirror, *extra):
    return dl.main(["flickr8k", "--dest", str(dest), "--mirror", mirror, *extra])


def assert_flickr8k_ready(dest):
    assert sorted(p.name for p in dest.iterdir()) == [".download-flickr8k.json", "Flicker8k_Dataset", "Flickr8k_text"]
    assert len(list((dest / "Flicker8k_Dataset").glob("*.jpg"))) == N_IMAGES
    source = ds.detect(dest)
    assert source.kind == "flickr8k"
    assert ds.convert(source, quiet=True)["sizes"] == {"train": 6, "val": 2, "test": 2}


# ---------------------------------------------------------------------------------------------------
# Success, and a rerun that does nothing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("images_in_folder,text_in_folder,macosx", [(True, False, True), (False, True, False)],
                         ids=["as-published", "other-zipping"])
def test_download_unpacks_the_original_layout_and_a_rerun_does_nothing(tmp_path, serve, capsys, images_in_folder,
                                                                       text_in_folder, macosx):
    zips = flickr_zips(tmp_path, images_in_folder, text_in_folder, macosx)
    server = serve(zips)
    dest = tmp_path / "data" / "flickr8k"
    assert download(dest, server.url) == 0
    out = capsys.readouterr().out
    assert server.names() == ["Flickr8k_Dataset.zip", "Flickr8k_text.zip"]
    assert_flickr8k_ready(dest)  # the zips are gone, no .part file, no __MACOSX folder
    assert f"{N_IMAGES} images, {N_CAPTIONS} caption lines" in out
    assert "the official Flickr8k has 8,091" in out and "the official Flickr8k has 40,460" in out  # warned
    assert "~1.1 GB" in out  # the sizes are said before downloading
    marker = json.loads(dl.done_marker(dest, "flickr8k").read_text())
    assert marker["counts"] == {"images": N_IMAGES, "caption lines": N_CAPTIONS}
    assert marker["files"]["Flickr8k_text.zip"]["sha256"] == hashlib.sha256(zips["Flickr8k_text.zip"]).hexdigest()

    assert download(dest, server.url) == 0
    assert len(server.requests) == 2  # nothing fetched again
    assert "already holds Flickr8k; nothing to download" in capsys.readouterr().out


def coco_zips(tmp_path):
    """The three COCO 2017 zips, tiny: two train images, one val image, two caption files."""
    image = (make_flickr(tmp_path / "src", 1, 0, 0)[0] / "Flicker8k_Dataset" / "img000_a1b2.jpg").read_bytes()
    return {"train2017.zip": zip_bytes({"train2017/000000000009.jpg": image, "train2017/000000000025.jpg": image}),
            "val2017.zip": zip_bytes({"val2017/000000000139.jpg": image}),
            "annotations_trainval2017.zip": zip_bytes({"annotations/captions_train2017.json": b"{}",
                                                       "annotations/captions_val2017.json": b"{}"})}


def test_download_coco_from_a_mirror(tmp_path, serve, capsys):
    files = coco_zips(tmp_path)
    server = serve(files)
    dest = tmp_path / "coco"
    assert dl.main(["coco", "--dest", str(dest), "--mirror", server.url + "/"]) == 0
    out = capsys.readouterr().out
    assert "train2017.zip (~18 GB), val2017.zip (~1 GB), annotations_trainval2017.zip (~241 MB)" in out
    assert sorted(server.names()) == sorted(files)  # the mirror's base, the files' own names
    assert sorted(p.name for p in (dest / "train2017").iterdir()) == ["000000000009.jpg", "000000000025.jpg"]
    assert (dest / "val2017" / "000000000139.jpg").is_file()
    assert (dest / "annotations" / "captions_val2017.json").read_bytes() == b"{}"
    assert "2 train2017 images, 1 val2017 images, 2 caption files" in out


# ---------------------------------------------------------------------------------------------------
# Interrupted downloads
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranges", [True, False], ids=["continued", "started-over"])
def test_a_cut_download_is_never_taken_for_whole_and_a_rerun_finishes_it(tmp_path, serve, capsys, ranges):
    files = flickr_zips(tmp_path)
    server = serve(files, ranges=ranges)
    server.cut.add("Flickr8k_Dataset.zip")
    dest = tmp_path / "flickr8k"
    assert download(dest, server.url, "--keep-zips") == 1
    err = capsys.readouterr().err
    size = len(files["Flickr8k_Dataset.zip"])
    assert f"the connection closed after {size // 2:,} of {size:,} bytes" in err and err.startswith("error: ")
    assert not (dest / "Flickr8k_Dataset.zip").exists()  # only the .part name holds the half file
    assert (dest / "Flickr8k_Dataset.zip.part").stat().st_size == size // 2
    assert not (dest / "Flicker8k_Dataset").exists() and not dl.done_marker(dest, "flickr8k").exists()

    assert download(dest, server.url, "--keep-zips") == 0
    assert server.requests[1] == ("Flickr8k_Dataset.zip", f"bytes={size // 2}-")  # asked for the rest
    assert (dest / "Flickr8k_Dataset.zip").read_bytes() == files["Flickr8k_Dataset.zip"]  # whole, either way
    assert not (dest / "Flickr8k_Dataset.zip.part").exists()
    assert len(list((dest / "Flicker8k_Dataset").glob("*.jpg"))) == N_IMAGES


# ---------------------------------------------------------------------------------------------------
# Interrupted or failed unpacking: never taken for a finished dataset
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("leftover", ["empty-folders", "cut-caption-file"])
def test_an_unfinished_coco_folder_is_downloaded_again(tmp_path, serve, capsys, leftover):
    dest = tmp_path / "coco"
    for folder in ("train2017", "val2017", "annotations"):
        (dest / folder).mkdir(parents=True)
    if leftover == "cut-caption-file":  # images there, but a caption file cut short
        for name in ("train2017/000000000009.jpg", "val2017/000000000139.jpg"):
            (dest / name).write_bytes(b"jpeg")
        (dest / "annotations" / "captions_train2017.json").write_text('{"images": [')
        (dest / "annotations" / "captions_val2017.json").write_text("{}")
    server = serve(coco_zips(tmp_path))
    assert dl.main(["coco", "--dest", str(dest), "--mirror", server.url]) == 0
    out = capsys.readouterr().out
    assert "nothing to download" not in out and f"note: {dest} does not hold a whole COCO 2017" in out
    assert len(server.requests) == 3 and dl.done_marker(dest, "coco").is_file()
    assert (dest / "annotations" / "captions_train2017.json").read_bytes() == b"{}"  # the cut file replaced


@pytest.mark.parametrize("leftover", ["no-images", "empty-caption-file"])
def test_a_failed_flickr8k_unpack_whose_zips_were_deleted_is_downloaded_again(tmp_path, serve, capsys, leftover):
    dest, _ = make_flickr(tmp_path / "flickr8k")  # what the failed unpack left, below
    if leftover == "no-images":
        for image in (dest / "Flicker8k_Dataset").iterdir():
            image.unlink()
    else:
        (dest / "Flickr8k_text" / "Flickr8k.token.txt").write_bytes(b"")
    server = serve(flickr_zips(tmp_path))
    assert download(dest, server.url) == 0
    out = capsys.readouterr().out
    assert "nothing to download" not in out and f"note: {dest} does not hold a whole Flickr8k" in out
    assert len(server.requests) == 2
    assert_flickr8k_ready(dest)


def test_an_unpack_interrupted_before_the_marker_is_done_again(tmp_path, serve, capsys, monkeypatch):
    """Everything unpacked but the run stopped before the marker (Ctrl-C, a full disk): the folder looks whole,
    yet the rerun unpacks again from the zips that were kept, and finishes."""
    server = serve(flickr_zips(tmp_path))
    dest = tmp_path / "flickr8k"

    def interrupted(spec, dest):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(dl, "check_counts", interrupted)
        with pytest.raises(KeyboardInterrupt):
            download(dest, server.url)
    assert dl.unpacking_marker(dest, "flickr8k").is_file() and (dest / "Flickr8k_Dataset.zip").is_file()
    capsys.readouterr()
    assert download(dest, server.url) == 0
    out = capsys.readouterr().out
    assert "did not finish last time" in out and f"unpacked {N_IMAGES:,} files of Flickr8k_Dataset.zip" in out
    assert len(server.requests) == 2  # the kept zips were used
    assert_flickr8k_ready(dest)  # the unpacking marker is gone, the done marker there, the zips deleted


# ---------------------------------------------------------------------------------------------------
# Archives that cannot be used
# ---------------------------------------------------------------------------------------------------
def test_a_corrupt_zip_fails_clearly_and_nothing_is_unpacked(tmp_path, serve, capsys):
    files = flickr_zips(tmp_path)
    files["Flickr8k_text.zip"] = b"PK\x03\x04 this is not really a zip archive" * 20
    server = serve(files)
    dest = tmp_path / "flickr8k"
    assert download(dest, server.url) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dest / 'Flickr8k_text.zip'} is not a readable zip archive")
    assert len(err.strip().splitlines()) == 1
    assert not (dest / "Flicker8k_Dataset").exists() and not (dest / "Flickr8k_text").exists()
    assert not dl.done_marker(dest, "flickr8k").exists()


def test_a_zip_without_the_caption_file_is_refused_before_unpacking(tmp_path, serve, capsys):
    files = flickr_zips(tmp_path)
    files["Flickr8k_text.zip"] = zip_bytes({"Flickr_8k.trainImages.txt": b"img000_a1b2.jpg\n"})
    server = serve(files)
    dest = tmp_path / "flickr8k"
    assert download(dest, server.url) == 1
    err = capsys.readouterr().err
    assert "Flickr8k_text.zip holds no Flickr8k.token.txt" in err
    assert not (dest / "Flicker8k_Dataset").exists() and not dl.done_marker(dest, "flickr8k").exists()


@pytest.mark.parametrize("evil", ["../escaped.txt", "Flicker8k_Dataset/../../escaped.txt", "ABSOLUTE",
                                  "..\\escaped.txt", "C:/escaped.txt"])
def test_members_that_would_escape_dest_are_refused_and_nothing_is_written(tmp_path, serve, capsys, evil):
    absolute = tmp_path / "escaped-abs.txt"  # an absolute member name, inside the test's folder
    evil = str(absolute) if evil == "ABSOLUTE" else evil
    files = flickr_zips(tmp_path)
    images = zipfile.ZipFile(io.BytesIO(files["Flickr8k_Dataset.zip"]))
    members = {n: images.read(n) for n in images.namelist()}
    members[evil] = b"escaped"
    files["Flickr8k_Dataset.zip"] = zip_bytes(members)
    server = serve(files)
    dest = tmp_path / "box" / "flickr8k"
    before = set(tmp_path.rglob("*"))
    assert download(dest, server.url) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "outside the destination" in err
    written = set(tmp_path.rglob("*")) - before
    assert all(dest in p.parents or p == dest for p in written if p != dest.parent)
    assert not any("escaped" in p.name for p in written)
    assert not absolute.exists()
    assert not (dest / "Flicker8k_Dataset").exists()


def test_member_paths():
    assert str(dl.member_path("Flicker8k_Dataset/./a.jpg")) == "Flicker8k_Dataset/a.jpg"
    assert str(dl.member_path("a\\b.jpg")) == "a/b.jpg"
    for bad in ("../a", "a/../../b", "/etc/passwd", "\\\\server\\share\\x", "D:\\x.jpg"):
        with pytest.raises(dl.DownloadError, match="outside the destination"):
            dl.member_path(bad)


# ---------------------------------------------------------------------------------------------------
# No network
# ---------------------------------------------------------------------------------------------------
def test_without_a_server_the_message_names_files_urls_and_where_to_put_them(tmp_path, serve, capsys):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}"
    dest = tmp_path / "flickr8k"
    assert download(dest, mirror) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {mirror}/Flickr8k_Dataset.zip")
    assert f"put them in {dest}/" in err
    for name in ("Flickr8k_Dataset.zip", "Flickr8k_text.zip"):
        assert f"{name} " in err and f"{mirror}/{name}" in err
    assert not dl.done_marker(dest, "flickr8k").exists()
    # Following the message: the zips put there by hand are used, still without a server.
    for name, data in flickr_zips(tmp_path).items():
        (dest / name).write_bytes(data)
    assert download(dest, mirror) == 0
    assert_flickr8k_ready(dest)


def test_the_official_urls_keep_the_file_names():
    urls = [dl.archive_url(a) for spec in dl.DOWNLOADS.values() for a in spec.archives]
    assert urls == ["https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
                    "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
                    "http://images.cocodataset.org/zips/train2017.zip",
                    "http://images.cocodataset.org/zips/val2017.zip",
                    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"]
    assert dl.archive_url(dl.DOWNLOADS["flickr8k"].archives[1], "http://m/x/") == "http://m/x/Flickr8k_text.zip"
