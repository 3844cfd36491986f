"""Drives Switchyard's image generation and speech to text with the official
`openai` Python SDK, unchanged: `images.generate` as base64 and as links,
`images.edit`,
`audio.transcriptions.create`, `audio.translations.create` and
`audio.speech.with_streaming_response.create`.

Run by the e2e test `sdk::official_openai_python_sdk_generates_images_and_transcribes`:
    python tests/sdk/openai_media.py --base-url URL/v1 --api-key KEY --model MODEL \
        --link-model MODEL --audio-model MODEL --audio FILE.wav --speech-model MODEL
Exits 0 when every check passes; prints one line per check.
"""

import argparse
import base64
import sys

import httpx
import openai

PNG = b"\x89PNG\r\n\x1a\n"


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True, help="an image model answering in base64")
    ap.add_argument("--link-model", required=True, help="an image model whose bytes the gateway links to")
    ap.add_argument("--audio-model", required=True, help="a transcription model")
    ap.add_argument("--audio", required=True, help="a WAV file to transcribe")
    ap.add_argument("--speech-model", required=True, help="a text-to-speech model")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    r = client.images.generate(model=args.model, prompt="a lighthouse", n=2, size="64x64")
    check("two images", len(r.data) == 2, r)
    for i, d in enumerate(r.data):
        check(f"image {i} is a PNG", base64.b64decode(d.b64_json).startswith(PNG))
    check("usage tokens", r.usage is not None and r.usage.output_tokens > 0, r.usage)

    big = client.images.generate(model=args.model, prompt="a harbour", size="512x512")
    check("a large image arrives whole", len(base64.b64decode(big.data[0].b64_json)) > 512 * 512 * 3)

    edited = client.images.edit(model=args.model, image=("door.png", base64.b64decode(r.data[0].b64_json)),
                                prompt="add a red door", size="16x16")
    check("an edit", base64.b64decode(edited.data[0].b64_json).startswith(PNG), edited)
    check("the edit saw the upload", "edited from 1 images" in (edited.data[0].revised_prompt or ""), edited)

    linked = client.images.generate(model=args.link_model, prompt="tide pools", response_format="url")
    url = linked.data[0].url
    check("a link", bool(url) and "/v1/images/content/" in url, url)
    got = httpx.get(url, timeout=30)
    check("the link serves the PNG", got.status_code == 200 and got.content.startswith(PNG), got.status_code)

    try:
        client.images.generate(model=args.model, prompt="p", n=11)
        check("n 11 refused", False)
    except openai.BadRequestError as e:
        check("n 11 refused naming n", e.body.get("param") == "n", e.body)
    with open(args.audio, "rb") as f:
        audio = f.read()
    t = client.audio.transcriptions.create(model=args.audio_model, file=("hello.wav", audio))
    check("a transcript", len(t.text.split()) == 8, t)
    plain = client.audio.transcriptions.create(model=args.audio_model, file=("hello.wav", audio),
                                               response_format="text")
    check("a plain-text transcript", plain.strip() == t.text, repr(plain))
    v = client.audio.transcriptions.create(model=args.audio_model, file=("hello.wav", audio),
                                           response_format="verbose_json", timestamp_granularities=["segment"])
    check("verbose_json has the duration", abs(v.duration - 2.0) < 0.01, v)
    tr = client.audio.translations.create(model=args.audio_model, file=("hallo.wav", audio))
    check("a translation", tr.text == t.text, tr)
    try:
        client.audio.transcriptions.create(model=args.audio_model, file=("notes.txt", b"hi"))
        check("a text file refused", False)
    except openai.BadRequestError as e:
        check("a text file refused naming file", e.body.get("param") == "file", e.body)
    with client.audio.speech.with_streaming_response.create(
            model=args.speech_model, voice="alloy", input="The tide turns at noon.") as r:
        check("speech is audio/mpeg", r.headers.get("content-type") == "audio/mpeg", r.headers)
        pieces = list(r.iter_bytes())
    spoken = b"".join(pieces)
    check("speech streams an MP3", spoken.startswith(b"ID3") and len(spoken) > 9000, len(spoken))
    wav = client.audio.speech.create(model=args.speech_model, voice="alloy", input="Hi.",
                                     response_format="wav")
    check("speech as WAV", wav.content.startswith(b"RIFF"), wav.content[:8])
    print("all checks passed")


if __name__ == "__main__":
    main()
