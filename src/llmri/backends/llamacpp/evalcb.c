/* llmri's eval callback for llama.cpp's scheduler (cb_eval), in C.

   The same answers and copies as recorder.py's Recorder.wants / Recorder.computed, without a trip
   into Python (and its GIL) at every graph node: llama.cpp asks about each of ~1,100 nodes per
   decode. Python fills struct llmri_state (native.py's _State, field for field) before each decode
   and reads seen / error back after it. No allocation, no libc beyond memcpy and strncmp, and no
   link against ggml: ggml_backend_tensor_get's address comes in from Python.

   mode IDLE: no recorder (ask -> false, computed -> true, as Python's callback with none installed);
   mode PYTHON: hand every call to the Python callback (a recorder this file does not reimplement);
   mode NATIVE: answer here. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LLMRI_ABI 1
#define NAME_LEN 64 /* GGML_MAX_NAME */
#define TYPE_F32 0  /* GGML_TYPE_F32 */

enum { MODE_IDLE = 0, MODE_NATIVE = 1, MODE_PYTHON = 2 };
enum { ERR_NONE = 0, ERR_SHAPE = 1, ERR_TWICE = 2, ERR_UNKNOWN = 3, ERR_BOUNDS = 4, ERR_EXTERNAL = 5 };

typedef void (*tensor_get_fn)(const void *tensor, void *data, size_t offset, size_t size);
typedef bool (*eval_fn)(void *tensor, bool ask, void *user_data);

/* the head of struct ggml_tensor (ggml.py's TensorHead, checked there on a tensor ggml made) */
struct head {
    int32_t type;
    void *buffer;
    int64_t ne[4];
    size_t nb[4];
};

struct slot {
    char name[NAME_LEN]; /* NUL-terminated */
    int32_t buf;
    int32_t layer;
};

struct llmri_state {
    /* set once per context */
    tensor_get_fn tensor_get;
    eval_fn python;
    int64_t name_offset;
    /* set per recording */
    int32_t mode;
    int32_t n_slots;
    const struct slot *slots;
    const int32_t *table; /* open addressing on fnv1a(name): slot index or -1; mask + 1 entries */
    int64_t mask;
    float *const *bases; /* per buffer: float32 [n, layers, d] */
    const int64_t *layers;
    int64_t n; /* rows of every buffer */
    int64_t d;
    float *scratch; /* scratch_rows * d floats */
    int64_t scratch_rows;
    /* set per decode, read back after it */
    int64_t row0;
    int64_t rows;
    uint8_t *seen; /* per slot */
    int32_t n_seen;
    int32_t error; /* ERR_*: the first error; every later tensor is declined */
    int32_t error_slot;
    int32_t error_type;
    int64_t error_ne[4];
};

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < NAME_LEN && s[i]; i++) {
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    }
    return h;
}

static int32_t lookup(const struct llmri_state *s, const char *name) {
    for (uint32_t i = fnv1a(name);; i++) {
        int32_t k = s->table[i & s->mask];
        if (k < 0) {
            return -1;
        }
        if (strncmp(s->slots[k].name, name, NAME_LEN) == 0) {
            return k;
        }
    }
}

static bool fail(struct llmri_state *s, int32_t error, int32_t k, const struct head *h) {
    s->error = error;
    s->error_slot = k;
    if (h) {
        s->error_type = h->type;
        memcpy(s->error_ne, h->ne, sizeof s->error_ne);
    }
    return false;
}

static bool computed(struct llmri_state *s, void *t) {
    if (s->error) {
        return false;
    }
    int32_t k = lookup(s, (const char *)t + s->name_offset);
    if (k < 0) {
        return fail(s, ERR_UNKNOWN, -1, NULL);
    }
    const struct head *h = (const struct head *)t;
    const int64_t d = s->d, rows = s->rows;
    if (h->type != TYPE_F32 || h->ne[0] != d || h->ne[1] != rows || h->ne[2] * h->ne[3] != 1 ||
        h->nb[1] != (size_t)(4 * d)) {
        return fail(s, ERR_SHAPE, k, h);
    }
    if (s->seen[k]) {
        return fail(s, ERR_TWICE, k, NULL);
    }
    const struct slot *sl = &s->slots[k];
    if (s->row0 < 0 || s->row0 + rows > s->n || (rows > 1 && rows > s->scratch_rows)) {
        return fail(s, ERR_BOUNDS, k, NULL);
    }
    s->seen[k] = 1;
    s->n_seen++;
    const int64_t lk = s->layers[sl->buf];
    float *base = s->bases[sl->buf];
    if (rows == 1) {
        s->tensor_get(t, base + d * (s->row0 * lk + sl->layer), 0, (size_t)(4 * d));
    } else {
        s->tensor_get(t, s->scratch, 0, (size_t)(4 * d * rows));
        for (int64_t r = 0; r < rows; r++) {
            memcpy(base + d * ((s->row0 + r) * lk + sl->layer), s->scratch + d * r, (size_t)(4 * d));
        }
    }
    return true;
}

bool llmri_eval(void *t, bool ask, void *user_data) {
    struct llmri_state *s = (struct llmri_state *)user_data;
    switch (s->mode) {
    case MODE_NATIVE:
        if (ask) {
            return !s->error && lookup(s, (const char *)t + s->name_offset) >= 0;
        }
        return computed(s, t);
    case MODE_PYTHON:
        return s->python(t, ask, user_data);
    default:
        return !ask;
    }
}

/* Fill table (mask + 1 entries, a power of two above n) with the slots' indices. */
void llmri_index(const struct slot *slots, int32_t n, int32_t *table, int64_t mask) {
    for (int64_t i = 0; i <= mask; i++) {
        table[i] = -1;
    }
    for (int32_t k = 0; k < n; k++) {
        uint32_t i = fnv1a(slots[k].name);
        while (table[i & mask] >= 0) {
            i++;
        }
        table[i & mask] = k;
    }
}

/* What Python checks before trusting this file: the ABI and the struct sizes it lays out. */
int64_t llmri_abi(void) { return LLMRI_ABI * 1000000 + (int64_t)sizeof(struct llmri_state) * 1000 + sizeof(struct slot); }
