/* A test double of Rockchip's librkllmrt with the ABI of rkllm.h, rknn-llm v1.3.0.
 *
 * Same symbols, same struct layouts. rkllm_run emits deterministic tokens from a worker
 * thread through the result callback, max_new_tokens of them: first a special token without
 * text (as the runtime does with skip_special_token), then " t1", " t2", ... (token ids
 * 1000+i); then FINISH with perf stats counting all of them. rkllm_abort stops it; an input
 * holding token 666 gets an ERROR; token 667 makes it stall after the first token until
 * aborted, token 668 stall for ever, ignoring rkllm_abort (a wedged NPU).
 *
 * The KV cache is modelled as a count of positions: a run appends its input and each token
 * it generates, and the numbers in the text count from the cache's size at the start
 * (" t1" on an empty cache, " t7" on one holding 6 positions), so that leftover context
 * shows in the output. keep_history=0 discards the run's history when the run completes;
 * an aborted or failed run leaves its positions behind until rkllm_clear_kv_cache (rkllm.h
 * promises no more than that). edge_double_answer() sets canned answers instead of the " tN"
 * tokens: one per run, in order (separated by '\x1e'), each streamed 4 bytes a token.
 * rkllm_set_function_tools records what it got. Every call records what it received in a text log (key=value lines) that
 * tests read with edge_double_record(); edge_double_layout() reports offsets and sizes.
 * Built by the test suite with the system C compiler.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef void *LLMHandle;
typedef enum { RKLLM_RUN_NORMAL = 0, RKLLM_RUN_WAITING = 1, RKLLM_RUN_FINISH = 2, RKLLM_RUN_ERROR = 3 } LLMCallState;
typedef enum { RKLLM_INPUT_PROMPT = 0, RKLLM_INPUT_TOKEN = 1, RKLLM_INPUT_EMBED = 2, RKLLM_INPUT_MULTIMODAL = 3 } RKLLMInputType;
typedef enum { RKLLM_INFER_GENERATE = 0, RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1, RKLLM_INFER_GET_LOGITS = 2 } RKLLMInferMode;
typedef int (*LLMGetEmbedCallback)(void *, int32_t *, uint64_t, void *, uint64_t);
typedef int (*LLMTokenizerCallback)(void *, const char *, int32_t, int32_t *, int32_t);

typedef struct {
    int32_t base_domain_id; int8_t embed_flash; int8_t enabled_cpus_num; uint32_t enabled_cpus_mask;
    uint8_t n_batch; int8_t use_cross_attn; uint8_t reserved[104];
} RKLLMExtendParam;

typedef struct {
    const char *model_path; int32_t max_context_len; int32_t max_new_tokens; int32_t top_k; int32_t n_keep;
    float top_p; float temperature; float repeat_penalty; float frequency_penalty; float presence_penalty;
    int32_t mirostat; float mirostat_tau; float mirostat_eta;
    bool skip_special_token; bool ignore_eos_token; bool is_async; RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct { float *embed; size_t n_tokens; } RKLLMEmbedInput;
typedef struct { int32_t *input_ids; size_t n_tokens; } RKLLMTokenInput;
typedef struct {
    char *prompt;
    struct { float *image_embed; size_t n_image_tokens; size_t n_image; const char *image_start; const char *image_end;
             const char *image_content; size_t image_width; size_t image_height; } image;
    struct { float *video_embed; size_t n_frame_tokens; size_t n_frame_per_video; size_t n_video; const char *video_start;
             const char *video_end; const char *video_content; size_t frame_width; size_t frame_height; } video;
} RKLLMMultiModalInput;

typedef struct {
    const char *role; bool enable_thinking; RKLLMInputType input_type;
    union { const char *prompt_input; RKLLMEmbedInput embed_input; RKLLMTokenInput token_input; RKLLMMultiModalInput multimodal_input; };
} RKLLMInput;

typedef struct { const char *lora_adapter_name; } RKLLMLoraParam;
typedef struct { int save_prompt_cache; const char *prompt_cache_path; } RKLLMPromptCacheParam;
typedef struct {
    int32_t top_k; float top_p; float temperature; float repeat_penalty; float frequency_penalty; float presence_penalty;
    int32_t mirostat; float mirostat_tau; float mirostat_eta;
} RKLLMSamplingParam;
typedef struct {
    RKLLMInferMode mode; RKLLMLoraParam *lora_params; RKLLMPromptCacheParam *prompt_cache_params;
    RKLLMSamplingParam *sampling_params; int keep_history; int32_t max_new_tokens;
} RKLLMInferParam;
typedef struct { const float *hidden_states; int embd_size; int num_tokens; } RKLLMResultLastHiddenLayer;
typedef struct { const float *logits; int vocab_size; int num_tokens; } RKLLMResultLogits;
typedef struct { float prefill_time_ms; int prefill_tokens; float generate_time_ms; int generate_tokens; float memory_usage_mb; } RKLLMPerfStat;
typedef struct {
    const char *text; int32_t token_id; RKLLMResultLastHiddenLayer last_hidden_layer; RKLLMResultLogits logits; RKLLMPerfStat perf;
} RKLLMResult;
typedef int (*LLMResultCallback)(RKLLMResult *, void *, LLMCallState);
typedef struct {
    LLMResultCallback result_callback; void *result_userdata;
    LLMTokenizerCallback tokenizer_callback; void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback; void *embed_userdata;
} RKLLMCallback;

static char g_log[65536];
static size_t g_log_len;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static RKLLMCallback g_cb;
static int32_t g_max_new_tokens = 16;
static volatile int g_abort, g_running;
static int g_kv_size; /* positions held in the modelled KV cache */
static int g_handle_storage;
static char g_answers[8192]; /* canned answers, '\x1e'-separated; consumed one per run */

static void record(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&g_lock);
    va_start(ap, fmt);
    int n = vsnprintf(g_log + g_log_len, sizeof g_log - g_log_len, fmt, ap);
    va_end(ap);
    if (n > 0 && g_log_len + (size_t)n < sizeof g_log) g_log_len += (size_t)n;
    pthread_mutex_unlock(&g_lock);
}

const char *edge_double_record(void) { return g_log; }
void edge_double_reset(void) { g_log_len = 0; g_log[0] = 0; g_answers[0] = 0; }
void edge_double_answer(const char *answers) { snprintf(g_answers, sizeof g_answers, "%s", answers); }

/* The next canned answer into `out` (empty if none), removed from the queue. */
static void next_answer(char *out, size_t size) {
    char *end = strchr(g_answers, '\x1e');
    size_t n = end ? (size_t)(end - g_answers) : strlen(g_answers);
    snprintf(out, size, "%.*s", (int)n, g_answers);
    memmove(g_answers, end ? end + 1 : g_answers + n, strlen(end ? end + 1 : g_answers + n) + 1);
}

int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                             const char *tool_response_str) {
    (void)handle;
    record("tools.system=%s\ntools.json=%s\ntools.response_tag=%s\n", system_prompt ? system_prompt : "",
           tools ? tools : "", tool_response_str ? tool_response_str : "");
    return 0;
}

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512; p.max_new_tokens = 16; p.top_k = 1; p.top_p = 0.9f; p.temperature = 0.8f;
    p.repeat_penalty = 1.1f; p.skip_special_token = true;
    return p;
}

int rkllm_init(LLMHandle *handle, RKLLMParam *p, RKLLMCallback *cb) {
    record("init.model_path=%s\ninit.max_context_len=%d\ninit.max_new_tokens=%d\ninit.top_k=%d\ninit.n_keep=%d\n",
           p->model_path ? p->model_path : "", p->max_context_len, p->max_new_tokens, p->top_k, p->n_keep);
    record("init.top_p=%.3f\ninit.temperature=%.3f\ninit.repeat_penalty=%.3f\ninit.frequency_penalty=%.3f\n"
           "init.presence_penalty=%.3f\ninit.skip_special_token=%d\ninit.ignore_eos_token=%d\ninit.is_async=%d\n",
           p->top_p, p->temperature, p->repeat_penalty, p->frequency_penalty, p->presence_penalty,
           p->skip_special_token, p->ignore_eos_token, p->is_async);
    record("init.base_domain_id=%d\ninit.embed_flash=%d\ninit.enabled_cpus_num=%d\ninit.enabled_cpus_mask=%u\n"
           "init.callback_set=%d\n", p->extend_param.base_domain_id, p->extend_param.embed_flash,
           p->extend_param.enabled_cpus_num, p->extend_param.enabled_cpus_mask, cb && cb->result_callback);
    if (!p->model_path || access(p->model_path, R_OK) != 0) return -1;
    g_cb = *cb;
    g_max_new_tokens = p->max_new_tokens;
    g_kv_size = 0; /* a new instance holds no history, whatever the last one left */
    *handle = &g_handle_storage;
    return 0;
}

int rkllm_destroy(LLMHandle handle) { record("destroyed=%d\n", handle == &g_handle_storage); return 0; }
int rkllm_abort(LLMHandle handle) { (void)handle; g_abort = 1; record("aborted=1\n"); return 0; }
int rkllm_is_running(LLMHandle handle) { (void)handle; return g_running ? 0 : 1; }
int rkllm_release_prompt_cache(LLMHandle handle) { (void)handle; return 0; }

int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos) {
    (void)handle;
    record("kv.clear=%d\nkv.clear_keep_system_prompt=%d\nkv.clear_range=%d\n", g_kv_size, keep_system_prompt,
           start_pos != NULL || end_pos != NULL);
    if (g_running) return -1;
    g_kv_size = 0;
    return 0;
}

int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes) {
    (void)handle;
    cache_sizes[0] = g_kv_size;
    return 0;
}

int rkllm_set_chat_template(LLMHandle handle, const char *system, const char *prefix, const char *postfix) {
    (void)handle;
    record("template.system=%s\ntemplate.prefix=%s\ntemplate.postfix=%s\n", system, prefix, postfix);
    return 0;
}

int rkllm_load_prompt_cache(LLMHandle handle, const char *path) {
    (void)handle;
    record("prompt_cache.loaded=%s\n", path);
    return access(path, R_OK) == 0 ? 0 : -1;
}

typedef enum { FLOW_NORMAL, FLOW_STALL, FLOW_WEDGE } Flow;
typedef struct {
    size_t n_input; int32_t n_new; int error; Flow flow; int keep_history; void *userdata; char answer[4096];
} Job;

static void *generate(void *arg) {
    Job *job = arg;
    RKLLMResult r;
    char text[32];
    int history = g_kv_size;
    g_kv_size += (int)job->n_input; /* prefilled, whatever happens next */
    if (job->error) {
        memset(&r, 0, sizeof r);
        g_cb.result_callback(&r, job->userdata, RKLLM_RUN_ERROR);
        g_running = 0;
        return NULL;
    }
    int emitted = 0;
    size_t canned = strlen(job->answer);
    for (size_t at = 0; at < canned && emitted < job->n_new && !g_abort; at += 4) {
        memset(&r, 0, sizeof r);
        snprintf(text, sizeof text, "%.4s", job->answer + at);
        r.text = text;
        r.token_id = 2000 + emitted++;
        g_kv_size++;
        if (g_cb.result_callback(&r, job->userdata, RKLLM_RUN_NORMAL) != 0) break;
    }
    for (int i = 0; i < job->n_new && !g_abort && !canned; i++) {
        memset(&r, 0, sizeof r);
        snprintf(text, sizeof text, " t%d", history + i);
        r.text = i == 0 ? NULL : text;
        r.token_id = 1000 + i;
        emitted++;
        g_kv_size++;
        if (g_cb.result_callback(&r, job->userdata, RKLLM_RUN_NORMAL) != 0) break;
        usleep(3000);
        while (job->flow == FLOW_STALL && !g_abort) usleep(1000);
        while (job->flow == FLOW_WEDGE) usleep(100000); /* rkllm_abort is not heard */
    }
    if (!g_abort && !job->keep_history) g_kv_size = 0; /* completed: its history discarded */
    memset(&r, 0, sizeof r);
    r.perf.prefill_tokens = (int)job->n_input;
    r.perf.prefill_time_ms = 1.5f;
    r.perf.generate_tokens = emitted;
    r.perf.generate_time_ms = 3.0f * (float)emitted;
    r.perf.memory_usage_mb = 123.5f;
    g_cb.result_callback(&r, job->userdata, RKLLM_RUN_FINISH);
    g_running = 0;
    return NULL;
}

int rkllm_run(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata) {
    if (handle != &g_handle_storage) return -1;
    Job job = {0, ip->max_new_tokens > 0 ? ip->max_new_tokens : g_max_new_tokens, 0, FLOW_NORMAL, ip->keep_history,
               userdata, ""};
    next_answer(job.answer, sizeof job.answer);
    record("run.role=%s\nrun.enable_thinking=%d\nrun.input_type=%d\n", in->role ? in->role : "", in->enable_thinking,
           in->input_type);
    if (in->input_type == RKLLM_INPUT_TOKEN) {
        long long sum = 0;
        for (size_t i = 0; i < in->token_input.n_tokens; i++) {
            sum += in->token_input.input_ids[i];
            if (in->token_input.input_ids[i] == 666) job.error = 1;
            if (in->token_input.input_ids[i] == 667) job.flow = FLOW_STALL;
            if (in->token_input.input_ids[i] == 668) job.flow = FLOW_WEDGE;
        }
        job.n_input = in->token_input.n_tokens;
        record("run.n_tokens=%zu\nrun.token_sum=%lld\n", in->token_input.n_tokens, sum);
    }
    record("run.mode=%d\nrun.keep_history=%d\nrun.max_new_tokens=%d\nrun.kv_size=%d\n", ip->mode, ip->keep_history,
           ip->max_new_tokens, g_kv_size);
    if (ip->sampling_params)
        record("run.top_k=%d\nrun.top_p=%.3f\nrun.temperature=%.3f\nrun.repeat_penalty=%.3f\n", ip->sampling_params->top_k,
               ip->sampling_params->top_p, ip->sampling_params->temperature, ip->sampling_params->repeat_penalty);
    if (ip->prompt_cache_params)
        record("run.prompt_cache_save=%d\nrun.prompt_cache_path=%s\n", ip->prompt_cache_params->save_prompt_cache,
               ip->prompt_cache_params->prompt_cache_path);
    g_abort = 0;
    g_running = 1;
    pthread_t worker;  /* the real runtime calls back from its own threads too */
    pthread_create(&worker, NULL, generate, &job);
    pthread_join(worker, NULL);
    return job.error ? -1 : 0;
}

int rkllm_run_async(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata) {
    return rkllm_run(handle, in, ip, userdata); /* enough for a double: the binding uses rkllm_run */
}

#define F(S, f) n += snprintf(out + n, size - n, #S "." #f "=%zu\n", offsetof(S, f))
#define Z(S) n += snprintf(out + n, size - n, #S "=%zu\n", sizeof(S))

size_t edge_double_layout(char *out, size_t size) {
    size_t n = 0;
    Z(RKLLMExtendParam); F(RKLLMExtendParam, base_domain_id); F(RKLLMExtendParam, embed_flash);
    F(RKLLMExtendParam, enabled_cpus_num); F(RKLLMExtendParam, enabled_cpus_mask); F(RKLLMExtendParam, n_batch);
    F(RKLLMExtendParam, use_cross_attn); F(RKLLMExtendParam, reserved);
    Z(RKLLMParam); F(RKLLMParam, model_path); F(RKLLMParam, max_context_len); F(RKLLMParam, max_new_tokens);
    F(RKLLMParam, top_k); F(RKLLMParam, n_keep); F(RKLLMParam, top_p); F(RKLLMParam, temperature);
    F(RKLLMParam, repeat_penalty); F(RKLLMParam, frequency_penalty); F(RKLLMParam, presence_penalty);
    F(RKLLMParam, mirostat); F(RKLLMParam, mirostat_tau); F(RKLLMParam, mirostat_eta);
    F(RKLLMParam, skip_special_token); F(RKLLMParam, ignore_eos_token); F(RKLLMParam, is_async);
    F(RKLLMParam, extend_param);
    Z(RKLLMEmbedInput); F(RKLLMEmbedInput, embed); F(RKLLMEmbedInput, n_tokens);
    Z(RKLLMTokenInput); F(RKLLMTokenInput, input_ids); F(RKLLMTokenInput, n_tokens);
    Z(RKLLMMultiModalInput); F(RKLLMMultiModalInput, prompt); F(RKLLMMultiModalInput, image);
    F(RKLLMMultiModalInput, video);
    Z(RKLLMInput); F(RKLLMInput, role); F(RKLLMInput, enable_thinking); F(RKLLMInput, input_type);
    F(RKLLMInput, prompt_input); F(RKLLMInput, token_input);
    Z(RKLLMLoraParam); F(RKLLMLoraParam, lora_adapter_name);
    Z(RKLLMPromptCacheParam); F(RKLLMPromptCacheParam, save_prompt_cache); F(RKLLMPromptCacheParam, prompt_cache_path);
    Z(RKLLMSamplingParam); F(RKLLMSamplingParam, top_k); F(RKLLMSamplingParam, top_p); F(RKLLMSamplingParam, temperature);
    F(RKLLMSamplingParam, repeat_penalty); F(RKLLMSamplingParam, frequency_penalty); F(RKLLMSamplingParam, presence_penalty);
    F(RKLLMSamplingParam, mirostat); F(RKLLMSamplingParam, mirostat_tau); F(RKLLMSamplingParam, mirostat_eta);
    Z(RKLLMInferParam); F(RKLLMInferParam, mode); F(RKLLMInferParam, lora_params); F(RKLLMInferParam, prompt_cache_params);
    F(RKLLMInferParam, sampling_params); F(RKLLMInferParam, keep_history); F(RKLLMInferParam, max_new_tokens);
    Z(RKLLMResultLastHiddenLayer); F(RKLLMResultLastHiddenLayer, hidden_states); F(RKLLMResultLastHiddenLayer, embd_size);
    F(RKLLMResultLastHiddenLayer, num_tokens);
    Z(RKLLMResultLogits); F(RKLLMResultLogits, logits); F(RKLLMResultLogits, vocab_size); F(RKLLMResultLogits, num_tokens);
    Z(RKLLMPerfStat); F(RKLLMPerfStat, prefill_time_ms); F(RKLLMPerfStat, prefill_tokens); F(RKLLMPerfStat, generate_time_ms);
    F(RKLLMPerfStat, generate_tokens); F(RKLLMPerfStat, memory_usage_mb);
    Z(RKLLMResult); F(RKLLMResult, text); F(RKLLMResult, token_id); F(RKLLMResult, last_hidden_layer);
    F(RKLLMResult, logits); F(RKLLMResult, perf);
    Z(RKLLMCallback); F(RKLLMCallback, result_callback); F(RKLLMCallback, result_userdata);
    F(RKLLMCallback, tokenizer_callback); F(RKLLMCallback, tokenizer_userdata); F(RKLLMCallback, embed_callback);
    F(RKLLMCallback, embed_userdata);
    return n;
}
